"""Rotary position embedding, with the frequency rescalings Llama checkpoints use."""

import math
from typing import Any

import torch
from torch import nn

from vllm import _custom_ops as ops


def rope_parameters(hf_config: Any) -> dict:
    """transformers 5 keeps theta and scaling in ``rope_parameters``; older configs
    use ``rope_theta`` and ``rope_scaling``."""
    params = dict(getattr(hf_config, "rope_parameters", None) or {})
    if not params:
        params = dict(getattr(hf_config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    return params


def _llama3_inv_freq(inv_freq: torch.Tensor, p: dict) -> torch.Tensor:
    """Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, and the
    band between is interpolated smoothly."""
    factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    old_len = p["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    smooth = ((old_len / wavelen) - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(wavelen > old_len / low, inv_freq / factor, blended)
    return torch.where(wavelen < old_len / high, inv_freq, out)


class RotaryEmbedding(nn.Module):
    """One cos/sin table for the whole model: every layer rotates by the same
    positions, so the decoder layers share this module."""

    def __init__(
        self,
        head_size: int,
        max_position: int,  # the engine's max_model_len: no row is wasted
        params: dict,
        dtype: torch.dtype,  # the activations' dtype, so no cast per call
        is_neox_style: bool = True,
        kernels: bool = True,
    ):
        super().__init__()
        self.head_size = head_size
        self.is_neox_style = is_neox_style
        self.kernels = kernels  # use the compiled kernel where it applies
        rot_dim = head_size
        base = params.get("rope_theta", 10000.0)
        exponent = torch.arange(0, rot_dim, 2, dtype=torch.int64).float() / rot_dim
        inv_freq = 1.0 / (base**exponent)
        kind = params["rope_type"]
        if kind == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, params)
        elif kind == "linear":
            inv_freq = inv_freq / params["factor"]
        elif kind != "default":
            raise ValueError(f"rope_type {kind!r} is not supported")
        t = torch.arange(max_position, dtype=torch.int64).float()
        freqs = torch.outer(t, inv_freq)  # [max_position, rot_dim / 2]
        cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(dtype)
        self.register_buffer("cos_sin_cache", cache, persistent=False)

    def forward(
        self,
        positions: torch.Tensor,  # [T]
        query: torch.Tensor,  # [T, Hq * D]
        key: torch.Tensor,  # [T, Hkv * D]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ops.rotary_embedding(
            positions,
            query,
            key,
            self.head_size,
            self.cos_sin_cache,
            self.is_neox_style,
            self.kernels,
        )
        return query, key
