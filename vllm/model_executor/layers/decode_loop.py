"""A decode-only step's decoder layers in one compiled call.

At batch 1 a decoder layer is a few weight streams, and the Python layer loop
around its ~12 kernel calls (module calls, dispatch, checks) cost about 0.1 ms a
layer on SmolLM2, a sixth of the step. ``_C::decode_layers`` makes the same
kernel calls in the same order as the modules, so a step gives bit-identical
results either way; the modules stay the definition (and the pure-torch
reference, with kernels off), and this loop only drops the Python between them.

It applies to steps whose every row decodes one token, on plain (unsharded,
unadapted, bias-free) Llama layers with the compiled kernels on; anything else
runs the module loop.
"""

import torch

from vllm import _custom_ops as ops
from vllm.model_executor.layers.attention import AttentionMetadata, KVCache
from vllm.model_executor.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)

_PLAIN = {
    "qkv_proj": QKVParallelLinear,
    "o_proj": RowParallelLinear,
    "gate_up_proj": MergedColumnParallelLinear,
    "down_proj": RowParallelLinear,
}


class DecodeLayerLoop:
    def __init__(self, layers: list, enabled: bool):
        self.layers = layers  # LlamaDecoderLayer of this stage, in order
        self.enabled = enabled and ops.HAS_KERNELS and bool(layers)
        self._args: tuple | None = None  # per-layer lists, once weights are final
        self._max_kernel_rows = -1  # ops.linear's kernel rule, found with _args

    def applies(self, x: torch.Tensor, meta: AttentionMetadata) -> bool:
        return (
            self.enabled
            and not meta.prefills
            and 0 < meta.num_decode_tokens == x.shape[0]
            and self._ready(x)
        )

    def __call__(
        self,
        positions: torch.Tensor,  # [T]
        x: torch.Tensor,  # [T, H]
        residual: torch.Tensor | None,  # [T, H]; None before the first layer
        kv_caches: list[KVCache],
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # hidden, residual: [T, H] each
        first = self.layers[0]
        attn, rotary = first.self_attn, first.self_attn.rotary_emb
        has_residual = residual is not None
        x = x.contiguous()
        if not has_residual:
            residual = torch.empty_like(x)
        torch.ops._C.decode_layers(
            x,
            residual,
            positions,
            has_residual,
            *self._args,
            [k for k, _ in kv_caches],
            [v for _, v in kv_caches],
            meta.slot_mapping,
            meta.decode_block_tables,
            meta.decode_context_lens,
            rotary.cos_sin_cache,
            rotary.is_neox_style,
            attn.attn.num_heads,
            attn.attn.num_kv_heads,
            attn.attn.head_size,
            first.input_layernorm.eps,
            attn.attn.scale,
            self._max_kernel_rows,
        )
        return x, residual

    def _ready(self, x: torch.Tensor) -> bool:
        """Gathers the weight lists on the first decode step (after loading
        and any module swaps), or turns the loop off for good if a layer is
        not plain or the kernels would not run on these dtypes."""
        if self._args is None:
            self._args = self._gather(x)
            self.enabled = self._args is not None
        return self.enabled

    def _gather(self, x: torch.Tensor) -> tuple | None:
        rows = []
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            parts = {
                "qkv_proj": attn.qkv_proj,
                "o_proj": attn.o_proj,
                "gate_up_proj": mlp.gate_up_proj,
                "down_proj": mlp.down_proj,
            }
            if any(type(m) is not _PLAIN[n] for n, m in parts.items()):
                return None  # LoRA wrappers, or another layer kind
            if any(m.bias is not None or m.tp.size > 1 for m in parts.values()):
                return None
            rows.append(
                (
                    layer.input_layernorm.weight,
                    attn.qkv_proj.weight,
                    attn.o_proj.weight,
                    layer.post_attention_layernorm.weight,
                    mlp.gate_up_proj.weight,
                    mlp.down_proj.weight,
                )
            )
        if not ops.kernels_enabled(True, x, *(t for row in rows for t in row[::3])):
            return None
        rotary = self.layers[0].self_attn.rotary_emb
        if rotary.cos_sin_cache.dtype not in (torch.float32, x.dtype):
            return None
        weights = {t.dtype for row in rows for t in row[1:3] + row[4:]}
        self._max_kernel_rows = ops.linear_kernel_max_rows(x.dtype, weights)
        return tuple(list(col) for col in zip(*rows))
