// Shared argument checks and dtype dispatch for the CPU kernels.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>

// fp32 is the fast path on AVX2 machines; bf16 is accepted and computed in fp32.
#define VLLM_DISPATCH_FLOAT_BF16(TYPE, NAME, ...)                  \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                   \
                     AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__))

namespace vllm_cpu {

// Kernels walk rows by stride but read each row as a dense vector, so only the
// last dimension must be contiguous (views like qkv.split(...) qualify).
inline void check_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.dim() >= 1 && t.stride(-1) == 1, name,
              " must be contiguous in its last dimension");
}

// Elements per token of a [T, ...] tensor whose per-token part is dense
// (token rows may still be strided), e.g. [T, H * D] or [T, H, D] views.
inline int64_t dense_row_width(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() >= 2, name, " must be [T, ...]");
  int64_t width = 1;
  for (int64_t d = t.dim() - 1; d >= 1; --d) {
    TORCH_CHECK(t.size(d) == 1 || t.stride(d) == width, name,
                " must be dense within each token row");
    width *= t.size(d);
  }
  return width;
}

inline void check_same_dtype(const at::Tensor& a, const at::Tensor& b,
                             const char* name) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), name, " has dtype ",
              b.scalar_type(), ", expected ", a.scalar_type());
}

// Rows per parallel chunk so each chunk holds about `work` elements (~0.1 ms
// of streaming work). Decode-sized calls then run on the calling thread: an
// OpenMP fork costs microseconds on an idle machine, but when the cores are
// busy, waking a sleeping worker can wait a whole scheduler slice (~5 ms).
inline int64_t grain_for(int64_t row_elems, int64_t work = 1 << 17) {
  return std::max<int64_t>(1, work / std::max<int64_t>(1, row_elems));
}

}  // namespace vllm_cpu
