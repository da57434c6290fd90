"""Read llama.cpp GGUF checkpoints as fp32 tensors under Hugging Face names.

Quantized blocks are dequantized with the ``gguf`` package itself, so the values
are bit-identical to what transformers' own GGUF path produces.
"""

import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from vllm.logger import init_logger

logger = init_logger(__name__)

# Architectures whose llama.cpp tensor layout we know. llama.cpp's converter
# interleaves the rotary halves of Q/K rows only for "llama" checkpoints.
_PERMUTED_QK_ARCHS = {"llama"}
SUPPORTED_ARCHS = _PERMUTED_QK_ARCHS

_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}

_LAYER_RE = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")
_GLOBAL_RE = re.compile(r"^(\w+)\.(weight|bias)$")


def gguf_to_hf_name(gguf_name: str) -> str | None:
    """Map e.g. ``blk.3.attn_q.weight`` to ``model.layers.3.self_attn.q_proj.weight``.

    Returns None for tensors that have no Hugging Face parameter (such as
    llama.cpp's precomputed ``rope_freqs``).
    """
    m = _LAYER_RE.match(gguf_name)
    if m:
        layer, part, kind = m.groups()
        hf_part = _LAYER_NAMES.get(part)
        return None if hf_part is None else f"model.layers.{layer}.{hf_part}.{kind}"
    m = _GLOBAL_RE.match(gguf_name)
    if m and m.group(1) in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[m.group(1)]}.{m.group(2)}"
    return None


def read_field(reader: Any, key: str, default: Any = None) -> Any:
    """A scalar, string or array metadata value of a ``gguf.GGUFReader``."""
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def gguf_architecture(reader: Any) -> str:
    arch = read_field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(
            f"GGUF architecture {arch!r} is not supported; supported: "
            f"{sorted(SUPPORTED_ARCHS)}"
        )
    return arch


def unpermute_qk(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row reordering.

    weight: [num_heads * head_dim, ...] (a projection weight or bias).
    llama.cpp stores each head's rows as interleaved pairs (x0, x_half, x1, ...)
    for its rotary kernel; Hugging Face keeps the two rotary halves contiguous.
    """
    rows = weight.shape[0]
    head_dim = rows // num_heads
    if head_dim * num_heads != rows or head_dim % 2:
        raise ValueError(f"cannot split {rows} rows into {num_heads} rotary heads")
    rest = weight.shape[1:]
    split = weight.reshape(num_heads, head_dim // 2, 2, *rest)
    return split.swapaxes(1, 2).reshape(weight.shape)


def _dequantize(tensor: Any) -> np.ndarray:
    from gguf.quants import dequantize

    # GGUF lists dimensions innermost first; numpy/torch want them outermost first.
    shape = tuple(int(d) for d in reversed(tensor.shape))
    values = dequantize(tensor.data, tensor.tensor_type)
    # Copy so that unquantized tensors do not stay views of the read-only mmap.
    return np.array(values, dtype=np.float32).reshape(shape)


def iterate_gguf_weights(gguf_path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (HF name, fp32 CPU tensor) for every model tensor of a GGUF file.

    Tensors are dequantized one at a time from the memory-mapped file, so peak
    memory stays near one fp32 tensor beyond what the caller keeps.
    """
    import gguf

    reader = gguf.GGUFReader(gguf_path)
    arch = gguf_architecture(reader)
    num_heads = int(read_field(reader, f"{arch}.attention.head_count"))
    num_kv_heads = int(read_field(reader, f"{arch}.attention.head_count_kv", num_heads))
    for tensor in reader.tensors:
        hf_name = gguf_to_hf_name(tensor.name)
        if hf_name is None:
            logger.warning("GGUF tensor %s has no HF counterpart; skipped", tensor.name)
            continue
        values = _dequantize(tensor)
        if arch in _PERMUTED_QK_ARCHS and ".q_proj." in hf_name:
            values = unpermute_qk(values, num_heads)
        elif arch in _PERMUTED_QK_ARCHS and ".k_proj." in hf_name:
            values = unpermute_qk(values, num_kv_heads)
        yield hf_name, torch.from_numpy(values)
