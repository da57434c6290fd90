// The one registration of the _C op library. Importing vllm._C loads this
// shared object, whose static initialisers register the schemas and the CPU
// kernels; Python then calls them as torch.ops._C.<name>.
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

// "Tensor!" marks arguments an op writes to, so the dispatcher (and
// torch.compile) knows about the side effects; every op returns nothing.
TORCH_LIBRARY(_C, m) {
  m.def("rms_norm(Tensor! out, Tensor x, Tensor weight, float eps) -> ()");
  m.def(
      "fused_add_rms_norm(Tensor! x, Tensor! residual, Tensor weight, float eps)"
      " -> ()");
  m.def(
      "rotary_embedding(Tensor positions, Tensor! query, Tensor! key,"
      " int head_size, Tensor cos_sin_cache, bool is_neox) -> ()");
  m.def("silu_and_mul(Tensor! out, Tensor x) -> ()");
  m.def(
      "reshape_and_cache(Tensor key, Tensor value, Tensor! key_cache,"
      " Tensor! value_cache, Tensor slot_mapping) -> ()");
  m.def(
      "paged_attention_decode(Tensor! out, Tensor query, Tensor key_cache,"
      " Tensor value_cache, Tensor block_tables, Tensor context_lens,"
      " float scale) -> ()");
  m.def("linear(Tensor! out, Tensor x, Tensor weight, Tensor? bias) -> ()");
  m.def(
      "sample_from_logits(Tensor! tokens, Tensor logits, Tensor temperature,"
      " Tensor points) -> ()");
  m.def(
      "decode_layers(Tensor! x, Tensor! residual, Tensor positions,"
      " bool has_residual, Tensor[] input_norms, Tensor[] qkv_weights,"
      " Tensor[] o_weights, Tensor[] post_norms, Tensor[] gate_up_weights,"
      " Tensor[] down_weights, Tensor(a!)[] key_caches,"
      " Tensor(b!)[] value_caches, Tensor slot_mapping, Tensor block_tables,"
      " Tensor context_lens, Tensor cos_sin_cache, bool is_neox, int num_heads,"
      " int num_kv_heads, int head_size, float eps, float scale,"
      " int max_kernel_rows) -> ()");
}

// CUDA kernels will register under the same schemas with
// TORCH_LIBRARY_IMPL(_C, CUDA, m) in csrc/cuda/ (not written yet).
TORCH_LIBRARY_IMPL(_C, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("fused_add_rms_norm", &fused_add_rms_norm);
  m.impl("rotary_embedding", &rotary_embedding);
  m.impl("silu_and_mul", &silu_and_mul);
  m.impl("reshape_and_cache", &reshape_and_cache);
  m.impl("paged_attention_decode", &paged_attention_decode);
  m.impl("linear", &linear);
  m.impl("sample_from_logits", &sample_from_logits);
  m.impl("decode_layers", &decode_layers);
}

// An empty Python module: it exists so that `import vllm._C` finds and loads
// this library (running the registrations above); it defines no functions.
static PyModuleDef vllm_c_module = {PyModuleDef_HEAD_INIT, "vllm._C",
                                    "vLLM compiled CPU kernels (torch.ops._C).",
                                    -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&vllm_c_module); }
