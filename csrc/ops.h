// Declarations of the kernels registered in torch_bindings.cpp. Every op
// writes into caller-provided tensors; "!" in the schemas marks which.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

void rms_norm(at::Tensor& out,           // [T, H]
              const at::Tensor& x,       // [T, H]
              const at::Tensor& weight,  // [H]
              double eps);

void fused_add_rms_norm(at::Tensor& x,         // [T, H]: becomes norm(x + res) * w
                        at::Tensor& residual,  // [T, H]: becomes x + res
                        const at::Tensor& weight,  // [H]
                        double eps);

void rotary_embedding(const at::Tensor& positions,  // [T] int64
                      at::Tensor& query,            // [T, Hq * D], in place
                      at::Tensor& key,              // [T, Hkv * D], in place
                      int64_t head_size,
                      const at::Tensor& cos_sin_cache,  // [max_pos, rot_dim]
                      bool is_neox);

void silu_and_mul(at::Tensor& out,      // [T, I]
                  const at::Tensor& x);  // [T, 2 * I]: gate then up

void reshape_and_cache(const at::Tensor& key,    // [T, Hkv, D]
                       const at::Tensor& value,  // [T, Hkv, D]
                       at::Tensor& key_cache,    // [num_blocks, Hkv, bs, D]
                       at::Tensor& value_cache,  // [num_blocks, Hkv, bs, D]
                       const at::Tensor& slot_mapping);  // [T] int64

void paged_attention_decode(at::Tensor& out,               // [B, Hq, D]
                            const at::Tensor& query,       // [B, Hq, D]
                            const at::Tensor& key_cache,   // [num_blocks, Hkv, bs, D]
                            const at::Tensor& value_cache,  // same as key_cache
                            const at::Tensor& block_tables,  // [B, max_blocks] int32
                            const at::Tensor& context_lens,  // [B] int32
                            double scale);

void linear(at::Tensor& out,                       // [M, N]
            const at::Tensor& x,                   // [M, K]
            const at::Tensor& weight,              // [N, K]; x's dtype, or
                                                   // fp16/bf16 when x is fp32
            const std::optional<at::Tensor>& bias);  // [N]

// Row r's token: the first whose cumulative softmax(logits[r] / temperature[r])
// reaches points[r] of the total; masked (-inf) logits are never drawn.
void sample_from_logits(at::Tensor& tokens,              // [R] int64
                        const at::Tensor& logits,        // [R, V] float32
                        const at::Tensor& temperature,   // [R] float32, > 0
                        const at::Tensor& points);       // [R] float64 in (0, 1]

// Llama decoder layers of a decode-only batch (one token per sequence), the
// kernels above called in the model's order: x becomes the last layer's MLP
// output and residual the running sum. Without a residual yet (the model's
// first layer), has_residual is false and residual is overwritten.
void decode_layers(at::Tensor& x,                  // [T, H]
                   at::Tensor& residual,           // [T, H]
                   const at::Tensor& positions,    // [T] int64
                   bool has_residual,
                   at::TensorList input_norms,     // per layer [H]
                   at::TensorList qkv_weights,     // per layer [(Hq + 2 Hkv) D, H]
                   at::TensorList o_weights,       // per layer [H, Hq D]
                   at::TensorList post_norms,      // per layer [H]
                   at::TensorList gate_up_weights,  // per layer [2 I, H]
                   at::TensorList down_weights,    // per layer [H, I]
                   at::TensorList key_caches,      // per layer, written
                   at::TensorList value_caches,    // per layer, written
                   const at::Tensor& slot_mapping,  // [T] int64
                   const at::Tensor& block_tables,  // [T, max_blocks] int32
                   const at::Tensor& context_lens,  // [T] int32
                   const at::Tensor& cos_sin_cache,  // [max_pos, rot_dim]
                   bool is_neox, int64_t num_heads, int64_t num_kv_heads,
                   int64_t head_size, double eps, double scale,
                   int64_t max_kernel_rows);
