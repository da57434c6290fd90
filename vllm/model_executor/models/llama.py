"""Llama-architecture decoder (Llama 2/3, SmolLM2, Mistral, Qwen2), built from
tensor-parallel layers. It reads like the math; sharding lives in the layers.

Sizes come from ``ModelConfig`` (the same numbers the KV cache is sized from);
only architecture switches (biases, norms' epsilon) are read off the HF config.
"""

from collections.abc import Iterable

import torch
from torch import nn

from vllm.config import ModelConfig
from vllm.distributed.parallel_state import TensorParallelGroup
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.attention import Attention, AttentionMetadata, KVCache
from vllm.model_executor.layers.decode_loop import DecodeLayerLoop
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from vllm.model_executor.layers.rotary_embedding import RotaryEmbedding, rope_parameters
from vllm.model_executor.layers.vocab_parallel_embedding import (
    ParallelLMHead,
    VocabParallelEmbedding,
)


def _has_qkv_bias(mc: ModelConfig) -> bool:
    c = mc.hf_config
    return bool(getattr(c, "attention_bias", False)) or c.model_type == "qwen2"


class LlamaAttention(nn.Module):
    def __init__(
        self, mc: ModelConfig, tp: TensorParallelGroup, rotary_emb: RotaryEmbedding
    ):
        super().__init__()
        hidden, head_dim = mc.hf_config.hidden_size, mc.head_size
        self.qkv_proj = QKVParallelLinear(
            hidden,
            head_dim,
            mc.num_attention_heads,
            mc.num_kv_heads,
            tp,
            bias=_has_qkv_bias(mc),
            kernels=mc.use_custom_kernels,
        )
        heads, kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.q_size, self.kv_size = heads * head_dim, kv_heads * head_dim
        self.o_proj = RowParallelLinear(
            mc.num_attention_heads * head_dim,
            hidden,
            tp,
            bias=bool(getattr(mc.hf_config, "attention_bias", False)),
            kernels=mc.use_custom_kernels,
        )
        self.rotary_emb = rotary_emb  # shared by every layer
        self.attn = Attention(heads, head_dim, kv_heads, mc.use_custom_kernels)

    def forward(
        self,
        positions: torch.Tensor,  # [T]
        x: torch.Tensor,  # [T, H]
        kv_cache: KVCache,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        qkv = self.qkv_proj(x)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        return self.o_proj(self.attn(q, k, v, kv_cache, meta))


class LlamaMLP(nn.Module):
    def __init__(self, mc: ModelConfig, tp: TensorParallelGroup):
        super().__init__()
        c = mc.hf_config
        size = c.intermediate_size
        bias = bool(getattr(c, "mlp_bias", False))
        kernels = mc.use_custom_kernels
        self.gate_up_proj = MergedColumnParallelLinear(
            c.hidden_size, [size, size], tp, bias=bias, kernels=kernels
        )
        self.down_proj = RowParallelLinear(
            size, c.hidden_size, tp, bias=bias, kernels=kernels
        )
        self.act_fn = SiluAndMul(mc.use_custom_kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


def _rms_norm(mc: ModelConfig) -> RMSNorm:
    c = mc.hf_config
    return RMSNorm(c.hidden_size, c.rms_norm_eps, mc.use_custom_kernels)


class LlamaDecoderLayer(nn.Module):
    def __init__(
        self, mc: ModelConfig, tp: TensorParallelGroup, rotary_emb: RotaryEmbedding
    ):
        super().__init__()
        self.self_attn = LlamaAttention(mc, tp, rotary_emb)
        self.mlp = LlamaMLP(mc, tp)
        self.input_layernorm = _rms_norm(mc)
        self.post_attention_layernorm = _rms_norm(mc)

    def forward(
        self,
        positions: torch.Tensor,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        kv_cache: KVCache,
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = x.clone()
            x = self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(positions, x, kv_cache, meta)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


# What a pipeline stage hands the next one: hidden states and residual, [T, H] each.
Carried = tuple[torch.Tensor, torch.Tensor]


class LlamaModel(nn.Module):
    """Builds the layers in ``layers`` (all by default; a pipeline stage's share
    otherwise), the embedding only if they start at layer 0 and the final norm
    only if they end at the last. Layers outside the range are parameterless
    placeholders, so parameter names keep the checkpoint's layer numbers."""

    def __init__(
        self, mc: ModelConfig, tp: TensorParallelGroup, layers: range | None = None
    ):
        super().__init__()
        c = mc.hf_config
        self.layer_range = layers = layers or range(mc.num_layers)
        self.embed_tokens = (
            VocabParallelEmbedding(mc.vocab_size, c.hidden_size, tp)
            if layers.start == 0
            else None
        )
        rotary_emb = RotaryEmbedding(
            mc.head_size,
            mc.max_model_len,
            rope_parameters(c),
            mc.dtype,
            kernels=mc.use_custom_kernels,
        )
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(mc, tp, rotary_emb) if i in layers else nn.Identity()
            for i in range(mc.num_layers)
        )
        self.norm = _rms_norm(mc) if layers.stop == mc.num_layers else None
        self.decode_loop = DecodeLayerLoop(
            [self.layers[i] for i in layers],
            mc.use_custom_kernels and mc.decode_layer_loop,
        )

    def forward(
        self,
        input_ids: torch.Tensor,  # [T]
        positions: torch.Tensor,  # [T]
        kv_caches: list[KVCache],  # one per layer in layer_range
        meta: AttentionMetadata,
        carried: Carried | None = None,  # from the previous stage, if any
    ) -> torch.Tensor | Carried:  # [T, H], or what the next stage takes
        if self.embed_tokens is not None:
            x, residual = self.embed_tokens(input_ids), None
        else:
            x, residual = carried
        if self.decode_loop.applies(x, meta):  # the same layers, compiled loop
            x, residual = self.decode_loop(positions, x, residual, kv_caches, meta)
        else:
            stage = self.layers[self.layer_range.start : self.layer_range.stop]
            for layer, kv_cache in zip(stage, kv_caches, strict=True):
                x, residual = layer(positions, x, residual, kv_cache, meta)
        if self.norm is None:
            return x, residual
        if residual is None:  # no layer (the control-plane benchmark's null model)
            return self.norm(x)
        x, _ = self.norm(x, residual)
        return x


# Our linear layers -> the HF projections each holds, in order, with the shard id
# its weight_loader takes for each (None: the layer is that one projection).
PROJECTIONS = {
    "qkv_proj": (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v")),
    "o_proj": (("o_proj", None),),
    "gate_up_proj": (("gate_proj", 0), ("up_proj", 1)),
    "down_proj": (("down_proj", None),),
}
# HF checkpoint name fragment -> (our fused parameter fragment, shard id)
_STACKED = [
    (f".{hf}.", f".{ours}.", sid)
    for ours, parts in PROJECTIONS.items()
    for hf, sid in parts
    if sid is not None
]


class LlamaForCausalLM(nn.Module):
    projections = PROJECTIONS

    @staticmethod
    def lora_targets(mc: ModelConfig) -> dict[str, tuple[int, int]]:
        """HF module path -> (in, out) features of every projection a LoRA adapter
        may target, so adapters can be checked without building the model."""
        c, hd = mc.hf_config, mc.head_size
        h, q, kv = c.hidden_size, mc.num_attention_heads * hd, mc.num_kv_heads * hd
        inter = c.intermediate_size
        shapes = {
            "self_attn.q_proj": (h, q),
            "self_attn.k_proj": (h, kv),
            "self_attn.v_proj": (h, kv),
            "self_attn.o_proj": (q, h),
            "mlp.gate_proj": (h, inter),
            "mlp.up_proj": (h, inter),
            "mlp.down_proj": (inter, h),
        }
        return {
            f"model.layers.{i}.{name}": shape
            for i in range(mc.num_layers)
            for name, shape in shapes.items()
        }

    def __init__(
        self, mc: ModelConfig, tp: TensorParallelGroup, layers: range | None = None
    ):
        super().__init__()
        self.config = c = mc.hf_config
        self.model = LlamaModel(mc, tp, layers)
        last = self.model.norm is not None
        self.lm_head = (
            ParallelLMHead(mc.vocab_size, c.hidden_size, tp, mc.use_custom_kernels)
            if last
            else None
        )
        self.tied = bool(getattr(c, "tie_word_embeddings", False))
        if self.tied and last and self.model.embed_tokens is not None:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        meta: AttentionMetadata,
        carried: Carried | None = None,
    ) -> torch.Tensor | Carried:
        return self.model(input_ids, positions, kv_caches, meta, carried)

    def compute_logits(
        self, hidden: torch.Tensor, gather_to_all: bool = True
    ) -> torch.Tensor | None:  # [N, H] -> [N, vocab]
        return self.lm_head.compute_logits(hidden, gather_to_all)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Loads HF-named tensors; returns the parameter names that were filled."""
        params = dict(self.named_parameters(remove_duplicate=False))
        owners = {name: self.get_submodule(name.rsplit(".", 1)[0]) for name in params}
        tied, embed = self.tied, self.model.embed_tokens
        loaded: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name or (tied and name == "lm_head.weight"):
                continue
            if tied and embed is None and name == "model.embed_tokens.weight":
                name = "lm_head.weight"  # a last stage without the embedding
            if self._built_elsewhere(name):
                continue
            shard_id = None
            for hf_part, our_part, sid in _STACKED:
                if hf_part in name:
                    name, shard_id = name.replace(hf_part, our_part), sid
                    break
            if name not in params:
                raise ValueError(f"checkpoint tensor {name!r} matches no parameter")
            loader = (
                owners[name].weight_loader
                if hasattr(owners[name], "weight_loader")
                else _copy_whole
            )
            args = (params[name], tensor) + (() if shard_id is None else (shard_id,))
            loader(*args)
            loaded.add(name)
        if tied:
            loaded.add("lm_head.weight")
        return loaded

    def _built_elsewhere(self, name: str) -> bool:
        """A checkpoint tensor of a part another pipeline stage builds."""
        parts = name.split(".")
        if parts[:2] == ["model", "layers"]:
            return int(parts[2]) not in self.model.layer_range
        if parts[0] == "model" and parts[1] in ("embed_tokens", "norm"):
            return getattr(self.model, parts[1]) is None
        return parts[0] == "lm_head" and self.lm_head is None


def _copy_whole(param: nn.Parameter, loaded: torch.Tensor) -> None:
    if param.shape != loaded.shape:
        raise ValueError(f"shape mismatch: {tuple(loaded.shape)} vs {param.shape}")
    param.data.copy_(loaded)
