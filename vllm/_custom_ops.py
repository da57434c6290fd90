"""Typed wrappers of the compute ops the model layers call.

Each op has a pure-torch implementation here, importable as ``_torch_<op>``.
When the compiled extension ``vllm._C`` is built, the public ``<op>`` wrappers
dispatch to its kernels (``torch.ops._C.<op>``, see ``csrc/torch_bindings.cpp``)
for fp32/bf16 CPU tensors; ``kernels=False`` forces the torch path (model layers
pass ``ModelConfig.use_custom_kernels``, set from ``VLLM_USE_CUSTOM_KERNELS`` once
when the engine config is built). ``HAS_KERNELS`` tells whether the extension
loaded. All ops but ``linear`` write into caller-provided tensors, so both paths
share one calling shape; ``linear`` returns its output like ``F.linear``, whose
large-row calls it leaves untouched.
"""

import torch
import torch.nn.functional as F

from vllm.cpu_info import has_native_bf16
from vllm.logger import init_logger

logger = init_logger(__name__)

# Dtypes the compiled kernels take; anything else runs the torch path.
_KERNEL_DTYPES = (torch.float32, torch.bfloat16)

# ``linear`` runs the compiled kernel for calls with at most this many rows
# (decode batches). On SmolLM2's layer shapes it is 1.3-2.2x F.linear up to 64
# rows, level with it at 128 and behind at 256, where F.linear's blocked GEMM
# wins (benchmarks/kernels/benchmark_linear.py; benchmarks/README.md,
# "Few-row linear kernel").
LINEAR_KERNEL_MAX_ROWS = 64
# bf16 x: where the CPU multiplies bf16 natively, torch's oneDNN matmul is 2-3.5x
# the kernel (which computes in fp32) from 4 rows up, so the kernel keeps only the
# bandwidth-bound calls of at most 3 rows, where it reads the weights faster.
BF16_LINEAR_KERNEL_MAX_ROWS = 3 if has_native_bf16() else LINEAR_KERNEL_MAX_ROWS


def _load_kernels() -> bool:
    try:
        import vllm._C  # noqa: F401  (loading it registers torch.ops._C.*)
    except ImportError as e:
        logger.warning(
            "vllm._C is not built (%s); using the slower pure-torch ops. Build it "
            "with: pip install -e . --no-build-isolation",
            e,
        )
        return False
    return True


# True when the compiled kernels are loaded (whether or not they are enabled).
HAS_KERNELS: bool = _load_kernels()


def kernels_enabled(kernels: bool, x: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether an op on `x` runs the compiled kernel (else the torch code):
    asked for, built, and applicable.

    The kernels want one dtype for all their float tensors; `others` must
    match `x`, where the torch code would silently promote instead."""
    return (
        kernels
        and HAS_KERNELS
        and x.is_cpu
        and x.dtype in _KERNEL_DTYPES
        and all(t.dtype == x.dtype for t in others)
    )


def _torch_rms_norm(
    out: torch.Tensor,  # [T, H]
    x: torch.Tensor,  # [T, H]
    weight: torch.Tensor,  # [H]
    eps: float,
) -> None:
    xf = x.float()
    var = xf.pow(2).mean(dim=-1, keepdim=True)
    out.copy_((xf * torch.rsqrt(var + eps)).to(x.dtype) * weight)


def _torch_fused_add_rms_norm(
    x: torch.Tensor,  # [T, H]; becomes norm(x + residual) * weight
    residual: torch.Tensor,  # [T, H]; becomes x + residual
    weight: torch.Tensor,  # [H]
    eps: float,
) -> None:
    residual.add_(x)
    _torch_rms_norm(x, residual, weight, eps)


def _torch_rotary_embedding(
    positions: torch.Tensor,  # [T] int64
    query: torch.Tensor,  # [T, Hq * D], rotated in place
    key: torch.Tensor,  # [T, Hkv * D], rotated in place
    head_size: int,
    cos_sin_cache: torch.Tensor,  # [max_position, rot_dim]: cos half, then sin half
    is_neox: bool,
) -> None:
    cos, sin = cos_sin_cache[positions].chunk(2, dim=-1)  # [T, rot_dim / 2] each
    rot_dim = cos_sin_cache.shape[-1]
    for x in (query, key):
        t = x.shape[0]
        heads = x.view(t, -1, head_size)
        rot = heads[..., :rot_dim]
        if is_neox:
            x1, x2 = rot[..., : rot_dim // 2], rot[..., rot_dim // 2 :]
        else:
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
        c, s = cos.unsqueeze(1), sin.unsqueeze(1)
        o1 = x1 * c - x2 * s
        o2 = x2 * c + x1 * s
        if is_neox:
            rot.copy_(torch.cat((o1, o2), dim=-1))
        else:
            rot.copy_(torch.stack((o1, o2), dim=-1).flatten(-2))


def _torch_silu_and_mul(
    out: torch.Tensor,  # [T, I]
    x: torch.Tensor,  # [T, 2 * I]: gate then up
) -> None:
    d = x.shape[-1] // 2
    out.copy_(F.silu(x[..., :d]) * x[..., d:])


def _torch_reshape_and_cache(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    key_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D]
    value_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D]
    slot_mapping: torch.Tensor,  # [T] int64: block_id * block_size + offset
) -> None:
    keep = slot_mapping >= 0  # -1 marks padding; it would wrap to the last block
    if not bool(keep.all()):
        key, value, slot_mapping = key[keep], value[keep], slot_mapping[keep]
    block_size = key_cache.shape[2]
    blocks = slot_mapping // block_size
    offsets = slot_mapping % block_size
    key_cache[blocks, :, offsets] = key
    value_cache[blocks, :, offsets] = value


def _torch_paged_attention_decode(
    out: torch.Tensor,  # [B, Hq, D]
    query: torch.Tensor,  # [B, Hq, D]: one query token per sequence
    key_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D]
    value_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D]
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    context_lens: torch.Tensor,  # [B] int32: keys each query attends to
    scale: float,
) -> None:
    """Gathers every sequence's blocks into a padded batch and masks the tail."""
    b, hq, d = query.shape
    _, hkv, block_size, _ = key_cache.shape
    max_len = int(context_lens.max())
    nblk = (max_len + block_size - 1) // block_size
    table = block_tables[:, :nblk].long()
    # [B, nblk, Hkv, bs, D] -> [B, Hkv, nblk * bs, D]
    k = key_cache[table].transpose(1, 2).reshape(b, hkv, nblk * block_size, d)
    v = value_cache[table].transpose(1, 2).reshape(b, hkv, nblk * block_size, d)
    group = hq // hkv
    q = query.view(b, hkv, group, d)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # [B, Hkv, G, L]
    pos = torch.arange(nblk * block_size, device=query.device)
    mask = pos[None, :] >= context_lens[:, None].long()  # [B, L]
    scores.masked_fill_(mask[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    out.copy_(torch.matmul(probs, v).view(b, hq, d))


def _torch_linear(
    x: torch.Tensor,  # [M, K]
    weight: torch.Tensor,  # [N, K]
    bias: torch.Tensor | None,  # [N]
) -> torch.Tensor:  # [M, N]
    return F.linear(x, weight, bias)


def _torch_sample_from_logits(
    tokens: torch.Tensor,  # [R] int64, written
    logits: torch.Tensor,  # [R, V] float32
    temperature: torch.Tensor,  # [R] float32, > 0
    points: torch.Tensor,  # [R] float64 in (0, 1]
) -> None:
    probs = torch.softmax(logits / temperature.unsqueeze(1), dim=-1)
    cdf = probs.double().cumsum(dim=-1)  # fp64: the tail of a 50k vocab stays exact
    # The first token whose CDF reaches the point; zero-probability tokens add no
    # width, so they can never be chosen (the point is never 0).
    targets = (points * cdf[:, -1]).unsqueeze(1)
    found = torch.searchsorted(cdf, targets).squeeze(1)
    tokens.copy_(found.clamp_(max=probs.shape[-1] - 1))


# Public ops: the compiled kernel when enabled, else the torch code above.


def linear(
    x: torch.Tensor,  # [M, K]
    weight: torch.Tensor,  # [N, K]; x's dtype, or fp16/bf16 with fp32 x
    bias: torch.Tensor | None = None,  # [N]
    kernels: bool = True,
) -> torch.Tensor:  # [M, N]
    """x @ weight.T + bias. Calls of at most LINEAR_KERNEL_MAX_ROWS rows (bf16 x:
    BF16_LINEAR_KERNEL_MAX_ROWS) run the kernel, which reads each weight row
    once for all rows, near the memory bandwidth; others (and inputs whose
    rows are not dense) run F.linear.
    16-bit weights under fp32 x (``--dtype float16`` on CPU) are widened
    exactly: in the kernel's registers, or to a temporary for F.linear."""
    # Checked inline, cheapest first: this runs for every layer of every step.
    xd, wd = x.dtype, weight.dtype
    if (
        kernels
        and HAS_KERNELS
        and x.dim() == 2
        and x.shape[0] <= _LINEAR_MAX_ROWS.get(xd, -1)
        and wd in _LINEAR_WEIGHTS[xd]
        and x.is_cpu
        and x.stride(-1) == 1
        and weight.stride(-1) == 1
        and (bias is None or (bias.dtype == xd and bias.stride(-1) == 1))
    ):
        out = torch.empty(x.shape[0], weight.shape[0], dtype=xd)
        torch.ops._C.linear(out, x, weight, bias)
        return out
    return _torch_linear(x, weight if wd == xd else weight.to(xd), bias)


# Rows up to which the kernel runs, and the weight dtypes it takes, by x dtype:
# 16-bit weights under fp32 x are widened in registers.
_LINEAR_MAX_ROWS = {
    torch.float32: LINEAR_KERNEL_MAX_ROWS,
    torch.bfloat16: BF16_LINEAR_KERNEL_MAX_ROWS,
}
_LINEAR_WEIGHTS = {
    torch.float32: (torch.float32, torch.float16, torch.bfloat16),
    torch.bfloat16: (torch.bfloat16,),
}


def linear_kernel_max_rows(x_dtype: torch.dtype, weight_dtypes: set) -> int:
    """Rows up to which ``linear`` runs the kernel for these dtypes (-1: never),
    for callers that apply its rule elsewhere (``_C::decode_layers``)."""
    if not weight_dtypes <= set(_LINEAR_WEIGHTS.get(x_dtype, ())):
        return -1
    return _LINEAR_MAX_ROWS.get(x_dtype, -1)


def rms_norm(
    out: torch.Tensor,  # [T, H]
    x: torch.Tensor,  # [T, H]
    weight: torch.Tensor,  # [H]
    eps: float,
    kernels: bool = True,
) -> None:
    if kernels_enabled(kernels, x, out, weight):
        torch.ops._C.rms_norm(out, x, weight, eps)
    else:
        _torch_rms_norm(out, x, weight, eps)


def fused_add_rms_norm(
    x: torch.Tensor,  # [T, H]; becomes norm(x + residual) * weight
    residual: torch.Tensor,  # [T, H]; becomes x + residual
    weight: torch.Tensor,  # [H]
    eps: float,
    kernels: bool = True,
) -> None:
    if kernels_enabled(kernels, x, residual, weight):
        torch.ops._C.fused_add_rms_norm(x, residual, weight, eps)
    else:
        _torch_fused_add_rms_norm(x, residual, weight, eps)


def rotary_embedding(
    positions: torch.Tensor,  # [T] int64
    query: torch.Tensor,  # [T, Hq * D], rotated in place
    key: torch.Tensor,  # [T, Hkv * D], rotated in place
    head_size: int,
    cos_sin_cache: torch.Tensor,  # [max_position, rot_dim]: cos half, then sin half
    is_neox: bool,
    kernels: bool = True,
) -> None:
    """The kernel reads strided rows (e.g. slices of a fused qkv output) and
    writes them in place, so no contiguous copies are made."""
    # The kernel also takes an fp32 table with bf16 activations.
    cache_ok = cos_sin_cache.dtype in (torch.float32, query.dtype)
    if cache_ok and kernels_enabled(kernels, query, key):
        torch.ops._C.rotary_embedding(
            positions, query, key, head_size, cos_sin_cache, is_neox
        )
    else:
        _torch_rotary_embedding(
            positions, query, key, head_size, cos_sin_cache, is_neox
        )


def silu_and_mul(
    out: torch.Tensor,  # [T, I]
    x: torch.Tensor,  # [T, 2 * I]: gate then up
    kernels: bool = True,
) -> None:
    if kernels_enabled(kernels, x, out):
        torch.ops._C.silu_and_mul(out, x)
    else:
        _torch_silu_and_mul(out, x)


def reshape_and_cache(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    key_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D]
    value_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D]
    slot_mapping: torch.Tensor,  # [T] int64: block_id * block_size + offset
    kernels: bool = True,
) -> None:
    """Slots of -1 (padding tokens) are skipped by the kernel."""
    if kernels_enabled(kernels, key, value, key_cache, value_cache):
        torch.ops._C.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)
    else:
        _torch_reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)


def paged_attention_decode(
    out: torch.Tensor,  # [B, Hq, D]
    query: torch.Tensor,  # [B, Hq, D]: one query token per sequence
    key_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D]
    value_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D]
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    context_lens: torch.Tensor,  # [B] int32: keys each query attends to
    scale: float,
    kernels: bool = True,
) -> None:
    """GQA-aware: query head h reads kv head h // (Hq // Hkv)."""
    if kernels_enabled(kernels, query, out, key_cache, value_cache):
        torch.ops._C.paged_attention_decode(
            out, query, key_cache, value_cache, block_tables, context_lens, scale
        )
    else:
        _torch_paged_attention_decode(
            out, query, key_cache, value_cache, block_tables, context_lens, scale
        )


def sample_from_logits(
    tokens: torch.Tensor,  # [R] int64, written
    logits: torch.Tensor,  # [R, V] float32; -inf marks tokens never drawn
    temperature: torch.Tensor,  # [R] float32, > 0
    points: torch.Tensor,  # [R] float64 in (0, 1]
    kernels: bool = True,
) -> None:
    """Row r's token: the first whose cumulative softmax(logits[r] / t_r) reaches
    points[r] of the row's total. The kernel never builds the probabilities or
    their fp64 cumulative sum (a few passes over [R, V] in torch)."""
    if (
        kernels_enabled(kernels, logits)
        and logits.dtype == torch.float32
        and logits.stride(-1) == 1
    ):
        torch.ops._C.sample_from_logits(tokens, logits, temperature, points)
    else:
        _torch_sample_from_logits(tokens, logits, temperature, points)
