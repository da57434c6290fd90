"""Attention over the paged KV cache for a batch that mixes prompt chunks and
single-token decodes.

The model runner orders the batch so single-token queries come first: they go
through the paged decode op in one call. Longer queries (a prompt, or a chunk of
one) are computed per sequence with SDPA, reading earlier context from the cache
when the chunk does not start at position 0.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vllm import _custom_ops as ops


@dataclass
class PrefillSeq:
    query_start: int  # first row of this sequence in the batch
    query_len: int
    context_len: int  # tokens in the cache after this step, this chunk included
    block_table: torch.Tensor  # [num_blocks] int64


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] int64: cache slot of every batch token
    num_decode_tokens: int  # the first rows, one token per sequence
    decode_block_tables: torch.Tensor  # [num_decode_tokens, max_blocks] int32
    decode_context_lens: torch.Tensor  # [num_decode_tokens] int32
    prefills: list[PrefillSeq]
    # (first, count) runs of prefills one SDPA call takes together, found once
    # per step here rather than in every layer.
    prefill_runs: list[tuple[int, int]] = field(init=False)

    def __post_init__(self) -> None:
        self.prefill_runs = _batches(self.prefills)


KVCache = tuple[torch.Tensor, torch.Tensor]  # key, value: [blocks, Hkv, bs, D]


class Attention(nn.Module):
    def __init__(
        self, num_heads: int, head_size: int, num_kv_heads: int, kernels: bool = True
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_size = head_size
        self.num_kv_heads = num_kv_heads
        self.scale = head_size**-0.5
        self.kernels = kernels  # use the compiled kernels where they apply

    def forward(
        self,
        q: torch.Tensor,  # [T, Hq * D]
        k: torch.Tensor,  # [T, Hkv * D]
        v: torch.Tensor,  # [T, Hkv * D]
        kv_cache: KVCache,
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [T, Hq * D]
        t = q.shape[0]
        q = q.reshape(t, self.num_heads, self.head_size)
        k = k.reshape(t, self.num_kv_heads, self.head_size)
        v = v.reshape(t, self.num_kv_heads, self.head_size)
        key_cache, value_cache = kv_cache
        ops.reshape_and_cache(
            k, v, key_cache, value_cache, meta.slot_mapping, self.kernels
        )
        out = torch.empty_like(q)
        d = meta.num_decode_tokens
        if d:
            ops.paged_attention_decode(
                out[:d],
                q[:d],
                key_cache,
                value_cache,
                meta.decode_block_tables,
                meta.decode_context_lens,
                self.scale,
                self.kernels,
            )
        for first, count in meta.prefill_runs:
            seq = meta.prefills[first]
            rows = slice(seq.query_start, seq.query_start + count * seq.query_len)
            if count == 1:
                out[rows] = self._prefill(q[rows], k[rows], v[rows], kv_cache, seq)
            else:
                out[rows] = self._fresh_prompts(q[rows], k[rows], v[rows], count)
        return out.view(t, self.num_heads * self.head_size)

    def _fresh_prompts(
        self,
        q: torch.Tensor,  # [n * L, Hq, D]: n whole prompts of L tokens, back to back
        k: torch.Tensor,  # [n * L, Hkv, D]
        v: torch.Tensor,  # [n * L, Hkv, D]
        n: int,
    ) -> torch.Tensor:  # [n * L, Hq, D]
        """Causal attention of n equal-length prompts in one SDPA call: at prompt
        lengths of a few hundred tokens the per-call cost dominates, and one
        call per prompt per layer spent most of it."""
        q, k, v = (x.unflatten(0, (n, -1)).transpose(1, 2) for x in (q, k, v))
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            is_causal=True,
            scale=self.scale,
            enable_gqa=self.num_heads != self.num_kv_heads,
        )
        return out.transpose(1, 2).flatten(0, 1)

    def _prefill(
        self,
        q: torch.Tensor,  # [L, Hq, D]
        k: torch.Tensor,  # [L, Hkv, D]
        v: torch.Tensor,  # [L, Hkv, D]
        kv_cache: KVCache,
        seq: PrefillSeq,
    ) -> torch.Tensor:  # [L, Hq, D]
        if seq.context_len == seq.query_len:  # the whole context is in this chunk
            mask, causal = None, True
        else:
            k, v = (_gather(c, seq.block_table, seq.context_len) for c in kv_cache)
            # Query i sits at absolute position context_len - query_len + i.
            first = seq.context_len - seq.query_len
            qpos = torch.arange(first, seq.context_len).unsqueeze(1)
            mask, causal = torch.arange(seq.context_len).unsqueeze(0) <= qpos, False
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1),
            k.transpose(0, 1),
            v.transpose(0, 1),
            attn_mask=mask,
            is_causal=causal,
            scale=self.scale,
            enable_gqa=self.num_heads != self.num_kv_heads,
        )
        return out.transpose(0, 1)


def _gather(
    cache: torch.Tensor,  # [blocks, Hkv, bs, D]
    block_table: torch.Tensor,  # [n] int64
    length: int,
) -> torch.Tensor:  # [length, Hkv, D]
    blocks = cache[block_table]  # [n, Hkv, bs, D]
    n, h, bs, d = blocks.shape
    return blocks.transpose(1, 2).reshape(n * bs, h, d)[:length]


def _batches(prefills: list[PrefillSeq]) -> list[tuple[int, int]]:
    """(index of the first, count) of runs of prefills that one SDPA call can
    take together: whole prompts (no cached context) of one length, adjacent in
    the batch. Anything else is a run of one."""
    runs: list[tuple[int, int]] = []
    for i, seq in enumerate(prefills):
        if runs and seq.context_len == seq.query_len:
            first, count = runs[-1]
            head = prefills[first]
            if (
                head.context_len == head.query_len == seq.query_len
                and seq.query_start == head.query_start + count * head.query_len
            ):
                runs[-1] = (first, count + 1)
                continue
        runs.append((i, 1))
    return runs
