// Rotary position embedding applied in place to query and key rows.
//
// cos_sin_cache rows hold rot_dim/2 cosines then rot_dim/2 sines. Only the
// first rot_dim entries of each head rotate (partial rotary leaves the rest).
#include <ATen/Parallel.h>

#include "../ops.h"
#include "cpu_utils.h"
#include "vec.h"

namespace vllm_cpu {
namespace {

// NeoX style: the head's rotated part is split in halves (x1 | x2).
template <typename T, typename C>
void rotate_neox(T* x, const C* cos, const C* sin, int64_t half) {
  int64_t i = 0;
  for (; i + kLanes <= half; i += kLanes) {
    Vec8 x1 = load8(x + i), x2 = load8(x + half + i);
    Vec8 c = load8(cos + i), s = load8(sin + i);
    store8(x + i, x1 * c - x2 * s);
    store8(x + half + i, x2 * c + x1 * s);
  }
  for (; i < half; ++i) {
    float x1 = to_float(x[i]), x2 = to_float(x[half + i]);
    float c = to_float(cos[i]), s = to_float(sin[i]);
    x[i] = from_float<T>(x1 * c - x2 * s);
    x[half + i] = from_float<T>(x2 * c + x1 * s);
  }
}

// GPT-J style: adjacent pairs (x[2i], x[2i+1]) rotate together. Interleaved
// lanes make this a poor fit for 8-wide vectors and it is rare; plain loop.
template <typename T, typename C>
void rotate_gptj(T* x, const C* cos, const C* sin, int64_t half) {
  for (int64_t i = 0; i < half; ++i) {
    float x1 = to_float(x[2 * i]), x2 = to_float(x[2 * i + 1]);
    float c = to_float(cos[i]), s = to_float(sin[i]);
    x[2 * i] = from_float<T>(x1 * c - x2 * s);
    x[2 * i + 1] = from_float<T>(x2 * c + x1 * s);
  }
}

struct RopeShape {
  int64_t tokens, q_heads, k_heads, head_size, half;
  int64_t q_stride, k_stride;  // elements between token rows
  bool neox;
};

template <typename T, typename C>
void rope(const RopeShape& s, const int64_t* pos, T* q, T* k, const C* cache) {
  const int64_t work = (s.q_heads + s.k_heads) * s.half * 2;
  at::parallel_for(0, s.tokens, grain_for(work), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const C* cos = cache + pos[t] * 2 * s.half;
      const C* sin = cos + s.half;
      for (int64_t h = 0; h < s.q_heads + s.k_heads; ++h) {
        T* head = h < s.q_heads ? q + t * s.q_stride + h * s.head_size
                                : k + t * s.k_stride + (h - s.q_heads) * s.head_size;
        if (s.neox) {
          rotate_neox(head, cos, sin, s.half);
        } else {
          rotate_gptj(head, cos, sin, s.half);
        }
      }
    }
  });
}

void check_positions(const at::Tensor& positions, int64_t max_pos) {
  const int64_t* p = positions.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < positions.numel(); ++i) {
    TORCH_CHECK(p[i] >= 0 && p[i] < max_pos, "position ", p[i],
                " is outside cos_sin_cache (", max_pos, " rows)");
  }
}

}  // namespace
}  // namespace vllm_cpu

void rotary_embedding(const at::Tensor& positions, at::Tensor& query,
                      at::Tensor& key, int64_t head_size,
                      const at::Tensor& cos_sin_cache, bool is_neox) {
  using namespace vllm_cpu;
  TORCH_CHECK(query.device().is_cpu() && key.device().is_cpu(), "expected CPU tensors");
  check_same_dtype(query, key, "key");
  TORCH_CHECK(positions.scalar_type() == at::kLong, "positions must be int64");
  const at::Tensor pos = positions.contiguous();
  const at::Tensor cache = cos_sin_cache.contiguous();
  const int64_t tokens = pos.numel(), rot_dim = cache.size(1);
  const int64_t q_width = dense_row_width(query, "query");
  const int64_t k_width = dense_row_width(key, "key");
  TORCH_CHECK(query.size(0) == tokens && key.size(0) == tokens,
              "query and key need one row per position");
  TORCH_CHECK(q_width % head_size == 0 && k_width % head_size == 0,
              "query/key widths must be multiples of head_size");
  TORCH_CHECK(rot_dim % 2 == 0 && rot_dim <= head_size, "bad rot_dim ", rot_dim);
  check_positions(pos, cache.size(0));
  const RopeShape s{tokens,      q_width / head_size, k_width / head_size, head_size,
                    rot_dim / 2, query.stride(0),     key.stride(0),       is_neox};
  const int64_t* pp = pos.const_data_ptr<int64_t>();
  VLLM_DISPATCH_FLOAT_BF16(query.scalar_type(), "rotary_embedding", [&] {
    scalar_t* q = query.data_ptr<scalar_t>();
    scalar_t* k = key.data_ptr<scalar_t>();
    // An fp32 table with bf16 activations is common, so accept both.
    if (cache.scalar_type() == at::kFloat) {
      rope(s, pp, q, k, cache.const_data_ptr<float>());
    } else {
      check_same_dtype(query, cache, "cos_sin_cache");
      rope(s, pp, q, k, cache.const_data_ptr<scalar_t>());
    }
  });
}
