// A decode step's Llama decoder layers in one call.
//
// At batch 1 a layer's work is a few weight streams, while the Python layer
// loop pays a module call and a dispatch for each of its ~12 ops: about 0.1 ms
// a layer, 3-5 ms of a 20 ms SmolLM2 step. This loop makes the same kernel
// calls in the same order as the Python modules (llama.py and the layers it
// builds), so its results are bit-identical to theirs; it only drops the
// Python in between.
#include <ATen/ATen.h>

#include "../ops.h"

namespace {

// What ops.linear does: the kernel for calls of at most max_kernel_rows rows,
// at::linear (torch's GEMM) beyond, on a widened copy of 16-bit weights.
at::Tensor project(const at::Tensor& x, const at::Tensor& w,
                   int64_t max_kernel_rows) {
  if (x.size(0) <= max_kernel_rows) {
    at::Tensor out = at::empty({x.size(0), w.size(0)}, x.options());
    linear(out, x, w, std::nullopt);
    return out;
  }
  const bool same = w.scalar_type() == x.scalar_type();
  return at::linear(x, same ? w : w.to(x.scalar_type()));
}

}  // namespace

void decode_layers(at::Tensor& x, at::Tensor& residual,
                   const at::Tensor& positions, bool has_residual,
                   at::TensorList input_norms, at::TensorList qkv_weights,
                   at::TensorList o_weights, at::TensorList post_norms,
                   at::TensorList gate_up_weights, at::TensorList down_weights,
                   at::TensorList key_caches, at::TensorList value_caches,
                   const at::Tensor& slot_mapping,
                   const at::Tensor& block_tables,
                   const at::Tensor& context_lens,
                   const at::Tensor& cos_sin_cache, bool is_neox,
                   int64_t num_heads, int64_t num_kv_heads, int64_t head_size,
                   double eps, double scale, int64_t max_kernel_rows) {
  const int64_t layers = static_cast<int64_t>(qkv_weights.size());
  for (const auto* list : {&input_norms, &o_weights, &post_norms,
                           &gate_up_weights, &down_weights, &key_caches,
                           &value_caches}) {
    TORCH_CHECK(static_cast<int64_t>(list->size()) == layers,
                "decode_layers: every per-layer list needs ", layers,
                " tensors");
  }
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && residual.sizes() == x.sizes(),
              "decode_layers: x and residual must be contiguous [T, H]");
  const int64_t t = x.size(0);
  const int64_t q_size = num_heads * head_size;
  const int64_t kv_size = num_kv_heads * head_size;
  at::Tensor h = x;
  for (int64_t i = 0; i < layers; ++i) {
    if (i == 0 && !has_residual) {  // the first layer of the model
      residual.copy_(h);
      at::Tensor normed = at::empty_like(h);
      rms_norm(normed, h, input_norms[i], eps);
      h = normed;
    } else {
      fused_add_rms_norm(h, residual, input_norms[i], eps);
    }
    at::Tensor qkv = project(h, qkv_weights[i], max_kernel_rows);
    at::Tensor q = qkv.narrow(1, 0, q_size);
    at::Tensor k = qkv.narrow(1, q_size, kv_size);
    at::Tensor v = qkv.narrow(1, q_size + kv_size, kv_size);
    rotary_embedding(positions, q, k, head_size, cos_sin_cache, is_neox);
    at::Tensor k3 = k.view({t, num_kv_heads, head_size});
    at::Tensor v3 = v.view({t, num_kv_heads, head_size});
    at::Tensor key_cache = key_caches[i], value_cache = value_caches[i];
    reshape_and_cache(k3, v3, key_cache, value_cache, slot_mapping);
    at::Tensor q3 = q.view({t, num_heads, head_size});
    at::Tensor attn = at::empty({t, num_heads, head_size}, h.options());
    paged_attention_decode(attn, q3, key_cache, value_cache, block_tables,
                           context_lens, scale);
    at::Tensor o = project(attn.view({t, q_size}), o_weights[i], max_kernel_rows);
    fused_add_rms_norm(o, residual, post_norms[i], eps);
    at::Tensor gate_up = project(o, gate_up_weights[i], max_kernel_rows);
    at::Tensor act = at::empty({t, gate_up.size(1) / 2}, h.options());
    silu_and_mul(act, gate_up);
    h = project(act, down_weights[i], max_kernel_rows);
  }
  if (!h.is_same(x)) x.copy_(h);
}
