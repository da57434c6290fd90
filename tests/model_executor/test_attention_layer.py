"""The attention layer's prefill path: whole prompts of one length that sit
next to each other go through SDPA together; each must still attend only to
its own tokens, causally, exactly as one call per prompt would."""

import torch

from vllm.model_executor.layers.attention import (
    Attention,
    AttentionMetadata,
    PrefillSeq,
    _batches,
)


def seq(start: int, query_len: int, context_len: int) -> PrefillSeq:
    return PrefillSeq(start, query_len, context_len, torch.zeros(1, dtype=torch.long))


def test_runs_group_adjacent_whole_prompts_of_one_length():
    prefills = [
        seq(0, 4, 4),
        seq(4, 4, 4),
        seq(8, 4, 4),
        seq(12, 3, 3),  # another length starts a new run
        seq(15, 3, 3),
        seq(18, 3, 7),  # a later chunk reads cached context: alone
        seq(21, 3, 3),  # not after a whole prompt of its length: new run
        seq(24, 3, 3),
    ]
    assert _batches(prefills) == [(0, 3), (3, 2), (5, 1), (6, 2)]
    assert _batches([]) == []


def reference(q, k, v, lengths, scale):  # [T, H, D] each; causal per prompt
    group = q.shape[1] // k.shape[1]
    out, start = [], 0
    for n in lengths:
        qs, ks, vs = (x[start : start + n].double() for x in (q, k, v))
        ks, vs = (x.repeat_interleave(group, dim=1) for x in (ks, vs))
        scores = torch.einsum("ihd,jhd->hij", qs, ks) * scale
        future = torch.ones(n, n, dtype=torch.bool).triu(1)
        probs = scores.masked_fill(future, float("-inf")).softmax(-1)
        out.append(torch.einsum("hij,jhd->ihd", probs, vs))
        start += n
    return torch.cat(out).float()


def test_grouped_prompts_attend_only_to_themselves():
    torch.manual_seed(0)
    lengths = [6, 6, 6, 4, 9, 9]
    attn = Attention(num_heads=4, head_size=16, num_kv_heads=2)
    t = sum(lengths)
    q, k, v = torch.randn(t, 64), torch.randn(t, 32), torch.randn(t, 32)
    cache = (torch.zeros(4, 2, 16, 16), torch.zeros(4, 2, 16, 16))
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    meta = AttentionMetadata(
        slot_mapping=torch.full((t,), -1, dtype=torch.long),  # no cache writes
        num_decode_tokens=0,
        decode_block_tables=torch.zeros(0, 1, dtype=torch.int32),
        decode_context_lens=torch.zeros(0, dtype=torch.int32),
        prefills=[seq(s, n, n) for s, n in zip(starts, lengths)],
    )
    assert _batches(meta.prefills) == [(0, 3), (3, 1), (4, 2)]
    out = attn(q, k, v, cache, meta).view(t, 4, 16)
    want = reference(
        q.view(t, 4, 16), k.view(t, 2, 16), v.view(t, 2, 16), lengths, 16**-0.5
    )
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
