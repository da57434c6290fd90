// Writes new keys/values into the paged KV cache at their slots.
#include <ATen/Parallel.h>

#include <cstring>

#include "../ops.h"
#include "cpu_utils.h"

namespace vllm_cpu {
namespace {

struct CacheShape {
  int64_t heads, head_size, block_size, num_blocks;
  int64_t k_tok, k_head, v_tok, v_head;  // key/value strides (elements)
  int64_t dst_blk, dst_head, dst_tok;  // cache strides (elements)
};

template <typename T>
void scatter_rows(const CacheShape& s, const int64_t* slots, int64_t tokens,
                  const T* key, const T* value, T* kc, T* vc) {
  const size_t row_bytes = s.head_size * sizeof(T);
  // Plain copies stream fast, so a chunk needs more rows to be worth a fork.
  const int64_t grain = grain_for(s.heads * s.head_size, 1 << 19);
  at::parallel_for(0, tokens, grain, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t slot = slots[t];
      if (slot < 0) continue;  // padding token: nothing to cache
      const int64_t blk = slot / s.block_size, off = slot % s.block_size;
      TORCH_CHECK(blk < s.num_blocks, "slot ", slot, " is past the cache");
      for (int64_t h = 0; h < s.heads; ++h) {
        const int64_t dst = blk * s.dst_blk + h * s.dst_head + off * s.dst_tok;
        std::memcpy(kc + dst, key + t * s.k_tok + h * s.k_head, row_bytes);
        std::memcpy(vc + dst, value + t * s.v_tok + h * s.v_head, row_bytes);
      }
    }
  });
}

}  // namespace
}  // namespace vllm_cpu

void reshape_and_cache(const at::Tensor& key, const at::Tensor& value,
                       at::Tensor& key_cache, at::Tensor& value_cache,
                       const at::Tensor& slot_mapping) {
  using namespace vllm_cpu;
  using Tensors = std::initializer_list<const at::Tensor*>;
  for (const at::Tensor* t : Tensors{&key, &value, &key_cache, &value_cache}) {
    check_rows(*t, "key/value/cache");
    check_same_dtype(key, *t, "key/value/cache");
  }
  TORCH_CHECK(key.dim() == 3 && key.sizes() == value.sizes(),
              "key and value must both be [T, Hkv, D]");
  TORCH_CHECK(key_cache.dim() == 4 && key_cache.sizes() == value_cache.sizes() &&
                  key_cache.strides() == value_cache.strides(),
              "caches must be [num_blocks, Hkv, block_size, D] with equal strides");
  TORCH_CHECK(key_cache.size(1) == key.size(1) && key_cache.size(3) == key.size(2),
              "cache heads/head_size do not match key");
  TORCH_CHECK(slot_mapping.scalar_type() == at::kLong &&
                  slot_mapping.numel() == key.size(0),
              "slot_mapping must be int64 [T]");
  const at::Tensor slots = slot_mapping.contiguous();
  const CacheShape s{key.size(1),         key.size(2),         key_cache.size(2),
                     key_cache.size(0),   key.stride(0),       key.stride(1),
                     value.stride(0),     value.stride(1),     key_cache.stride(0),
                     key_cache.stride(1), key_cache.stride(2)};
  VLLM_DISPATCH_FLOAT_BF16(key.scalar_type(), "reshape_and_cache", [&] {
    scatter_rows(s, slots.const_data_ptr<int64_t>(), key.size(0),
                 key.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(),
                 key_cache.data_ptr<scalar_t>(), value_cache.data_ptr<scalar_t>());
  });
}
