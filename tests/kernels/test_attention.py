import math

import pytest
import torch

from vllm import _custom_ops as ops


def ref_decode_attention(
    query, key_cache, value_cache, block_tables, context_lens, scale
):
    """Per sequence: gather its keys/values position by position, then an
    explicit softmax per query head (query head h reads kv head h // G)."""
    batch, hq, _ = query.shape
    hkv, block_size = key_cache.shape[1], key_cache.shape[2]
    group = hq // hkv
    out = torch.empty_like(query)
    for b in range(batch):
        ctx = int(context_lens[b])
        rows = [
            (int(block_tables[b, p // block_size]), p % block_size) for p in range(ctx)
        ]
        keys = torch.stack(
            [key_cache[blk, :, off] for blk, off in rows]
        )  # [ctx, Hkv, D]
        values = torch.stack([value_cache[blk, :, off] for blk, off in rows])
        for h in range(hq):
            logits = keys[:, h // group] @ query[b, h] * scale  # [ctx]
            weights = torch.exp(logits - logits.max())
            weights = weights / weights.sum()
            out[b, h] = weights @ values[:, h // group]
    return out


def make_paged_inputs(
    context_lens, hq, hkv, head_size, block_size, dtype=torch.float32
):
    """Random caches with each sequence's blocks scattered in a shuffled pool."""
    batch = len(context_lens)
    blocks_per_seq = [math.ceil(c / block_size) for c in context_lens]
    max_blocks = max(blocks_per_seq) + 1  # a spare column the kernel must not read
    num_blocks = sum(blocks_per_seq) + 3
    pool = torch.randperm(num_blocks).tolist()
    block_tables = torch.full((batch, max_blocks), -1, dtype=torch.int32)
    for b, n in enumerate(blocks_per_seq):
        block_tables[b, :n] = torch.tensor([pool.pop() for _ in range(n)])
    shape = (num_blocks, hkv, block_size, head_size)
    key_cache = torch.randn(shape).to(dtype)
    value_cache = torch.randn(shape).to(dtype)
    query = torch.randn(batch, hq, head_size).to(dtype)
    lens = torch.tensor(context_lens, dtype=torch.int32)
    return query, key_cache, value_cache, block_tables, lens


@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("group", [1, 3, 4])
@pytest.mark.parametrize("head_size", [64, 128])
def test_paged_attention_decode_fp32(
    block_size: int, group: int, head_size: int
) -> None:
    hkv = 2
    # Lengths inside one block, exactly filling blocks, and crossing boundaries.
    context_lens = [1, block_size, block_size + 1, 3 * block_size - 5, 77]
    query, kc, vc, tables, lens = make_paged_inputs(
        context_lens, hkv * group, hkv, head_size, block_size
    )
    scale = head_size**-0.5
    out = torch.empty_like(query)
    torch.ops._C.paged_attention_decode(out, query, kc, vc, tables, lens, scale)
    want = ref_decode_attention(query, kc, vc, tables, lens, scale)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_torch_fallback_matches_reference() -> None:
    # The pure-torch path in _custom_ops is what runs without the extension.
    query, kc, vc, tables, lens = make_paged_inputs([5, 40, 17], 6, 2, 64, 16)
    out = torch.empty_like(query)
    ops._torch_paged_attention_decode(out, query, kc, vc, tables, lens, 0.125)
    want = ref_decode_attention(query, kc, vc, tables, lens, 0.125)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_paged_attention_strided_query_and_out() -> None:
    hq, hkv, d = 9, 3, 64
    query, kc, vc, tables, lens = make_paged_inputs([33, 2, 64], hq, hkv, d, 16)
    # The query is the q part of a fused qkv row; out is a slice of a wider buffer.
    qkv = torch.randn(3, (hq + 2 * hkv) * d)
    qkv[:, : hq * d] = query.reshape(3, -1)
    q_view = qkv[:, : hq * d].view(3, hq, d)
    out_wide = torch.zeros(3, hq + 1, d)
    out = out_wide[:, :hq]
    torch.ops._C.paged_attention_decode(out, q_view, kc, vc, tables, lens, 0.125)
    want = ref_decode_attention(query, kc, vc, tables, lens, 0.125)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    assert torch.all(out_wide[:, hq] == 0)


def test_paged_attention_long_context_large_logits() -> None:
    # Logits in the tens test that the max is subtracted before exponentiating.
    query, kc, vc, tables, lens = make_paged_inputs([700, 301], 4, 1, 128, 32)
    query *= 8
    out = torch.empty_like(query)
    torch.ops._C.paged_attention_decode(out, query, kc, vc, tables, lens, 0.25)
    want = ref_decode_attention(query, kc, vc, tables, lens, 0.25)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_paged_attention_bf16() -> None:
    args = make_paged_inputs([20, 50], 8, 2, 64, 16, dtype=torch.bfloat16)
    query = args[0]
    out = torch.empty_like(query)
    torch.ops._C.paged_attention_decode(out, *args, 0.125)
    fp32 = [a.float() if a.is_floating_point() else a for a in args]
    want = ref_decode_attention(*fp32, 0.125)
    torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=2e-2)


def test_paged_attention_empty_context_gives_zeros() -> None:
    query, kc, vc, tables, lens = make_paged_inputs([16, 16], 4, 2, 64, 16)
    lens[1] = 0
    out = torch.full_like(query, float("nan"))
    torch.ops._C.paged_attention_decode(out, query, kc, vc, tables, lens, 0.125)
    assert torch.all(out[1] == 0)
    want = ref_decode_attention(query[:1], kc, vc, tables[:1], lens[:1], 0.125)
    torch.testing.assert_close(out[:1], want, rtol=1e-5, atol=1e-5)
