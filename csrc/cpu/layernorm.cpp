// RMSNorm and the fused residual-add + RMSNorm, one token row per task.
#include <ATen/Parallel.h>

#include <cmath>

#include "../ops.h"
#include "cpu_utils.h"
#include "vec.h"

namespace vllm_cpu {
namespace {

// out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i]; sums in fp32 for bf16 too.
template <typename T>
void rms_norm_row(T* out, const T* x, const T* w, int64_t h, float eps) {
  Vec8 acc = set1(0.f);
  int64_t i = 0;
  for (; i + kLanes <= h; i += kLanes) {
    Vec8 v = load8(x + i);
    acc = fma(v, v, acc);
  }
  float ss = hsum(acc);
  for (int64_t j = i; j < h; ++j) ss += to_float(x[j]) * to_float(x[j]);
  const float inv = 1.f / std::sqrt(ss / static_cast<float>(h) + eps);
  const Vec8 vinv = set1(inv);
  for (i = 0; i + kLanes <= h; i += kLanes) {
    store8(out + i, load8(x + i) * vinv * load8(w + i));
  }
  for (; i < h; ++i) out[i] = from_float<T>(to_float(x[i]) * inv * to_float(w[i]));
}

// residual += x, then x = rmsnorm(residual) * w. The norm reads the stored
// residual so bf16 normalises exactly the rounded values it keeps.
template <typename T>
void add_rms_norm_row(T* x, T* res, const T* w, int64_t h, float eps) {
  int64_t i = 0;
  for (; i + kLanes <= h; i += kLanes) store8(res + i, load8(res + i) + load8(x + i));
  for (; i < h; ++i) res[i] = from_float<T>(to_float(res[i]) + to_float(x[i]));
  rms_norm_row(x, res, w, h, eps);
}

void check_norm_args(const at::Tensor& out, const at::Tensor& x,
                     const at::Tensor& w) {
  check_rows(out, "out");
  check_rows(x, "x");
  TORCH_CHECK(x.dim() == 2 && out.sizes() == x.sizes(), "expected [T, H] tensors");
  TORCH_CHECK(w.dim() == 1 && w.size(0) == x.size(1), "weight must be [H]");
  check_same_dtype(x, out, "out");
  check_same_dtype(x, w, "weight");
}

}  // namespace
}  // namespace vllm_cpu

void rms_norm(at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
              double eps) {
  using namespace vllm_cpu;
  check_norm_args(out, x, weight);
  const at::Tensor w = weight.contiguous();
  const int64_t t = x.size(0), h = x.size(1);
  const int64_t xs = x.stride(0), os = out.stride(0);
  VLLM_DISPATCH_FLOAT_BF16(x.scalar_type(), "rms_norm", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, t, grain_for(h), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        rms_norm_row(op + r * os, xp + r * xs, wp, h, static_cast<float>(eps));
      }
    });
  });
}

void fused_add_rms_norm(at::Tensor& x, at::Tensor& residual,
                        const at::Tensor& weight, double eps) {
  using namespace vllm_cpu;
  check_norm_args(residual, x, weight);
  const at::Tensor w = weight.contiguous();
  const int64_t t = x.size(0), h = x.size(1);
  const int64_t xs = x.stride(0), rs = residual.stride(0);
  VLLM_DISPATCH_FLOAT_BF16(x.scalar_type(), "fused_add_rms_norm", [&] {
    scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* rp = residual.data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    at::parallel_for(0, t, grain_for(h), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        add_rms_norm_row(xp + r * xs, rp + r * rs, wp, h, static_cast<float>(eps));
      }
    });
  });
}
