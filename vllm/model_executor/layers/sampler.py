"""Turns logits into next tokens.

Random sampling inverts the CDF of the filtered distribution at a point
``u in (0, 1]``, and ``u`` for a request's i-th output is a hash of ``(seed, i)``
alone. A request's tokens therefore depend only on its own seed and logits: not on
batch composition, on preemption, or on which rank samples, which is what lets every
SPMD rank sample identically. (One hashed number per row also costs far less than a
vocabulary-sized noise draw.)
"""

from collections.abc import Sequence
from typing import Protocol

import torch

from vllm.messages import Logprobs, SamplingOptions

_MASK64 = (1 << 64) - 1


class SamplingRow(Protocol):
    sampling: SamplingOptions
    token_ids: list[int]  # prompt then outputs
    num_prompt_tokens: int


def step_seed(seed: int, index: int) -> int:
    """splitmix64 of (seed, index): well-spread seeds for neighbouring steps."""
    z = (seed * 0x9E3779B97F4A7C15 + index + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


def uniform_point(seed: int, index: int) -> float:
    """A number in (0, 1] determined by (seed, index) alone."""
    return ((step_seed(seed, index) >> 10) + 1) * 2.0**-53


def sample(
    logits: torch.Tensor,  # [N, V] float32, one row per request; modified in place
    rows: Sequence[SamplingRow],
) -> tuple[list[int], list[Logprobs | None]]:
    wants_logprobs = any(r.sampling.logprobs >= 0 for r in rows)
    raw = torch.log_softmax(logits, dim=-1) if wants_logprobs else None
    _apply_penalties(logits, rows)
    _apply_bans(logits, rows)
    random_rows = [i for i, r in enumerate(rows) if r.sampling.temperature > 0.0]
    if len(random_rows) == len(rows):  # the common all-random batch: no argmax pass
        tokens = _sample_random(logits, rows)
    else:
        tokens = logits.argmax(dim=-1)
        if random_rows:
            picked = torch.tensor(random_rows)
            chosen = [rows[i] for i in random_rows]
            tokens[picked] = _sample_random(logits[picked], chosen)
    token_list = tokens.tolist()
    if raw is None:
        return token_list, [None] * len(rows)
    return token_list, [
        logprobs_at(raw[i], token_list[i], r.sampling.logprobs)
        if r.sampling.logprobs >= 0
        else None
        for i, r in enumerate(rows)
    ]


def logprobs_at(
    logprobs: torch.Tensor,  # [V]
    token_id: int,
    k: int,
) -> Logprobs:
    chosen = logprobs[token_id]
    rank = int((logprobs > chosen).sum()) + 1
    ids, values = [token_id], [float(chosen)]
    if k > 0:
        top = logprobs.topk(k)
        ids += top.indices.tolist()
        values += top.values.tolist()
    return Logprobs(token_ids=ids, logprobs=values, rank=rank)


def _apply_penalties(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> None:
    vocab = logits.shape[-1]
    for i, r in enumerate(rows):
        s = r.sampling
        if not (s.presence_penalty or s.frequency_penalty or s.repetition_penalty != 1):
            continue
        outputs = torch.tensor(r.token_ids[r.num_prompt_tokens :], dtype=torch.long)
        counts = torch.bincount(outputs, minlength=vocab)[:vocab].to(logits.dtype)
        row = logits[i]
        if s.repetition_penalty != 1.0:
            seen = counts > 0
            seen[torch.tensor(r.token_ids[: r.num_prompt_tokens], dtype=torch.long)] = (
                True
            )
            penalised = torch.where(
                row > 0, row / s.repetition_penalty, row * s.repetition_penalty
            )
            row.copy_(torch.where(seen, penalised, row))
        row -= s.frequency_penalty * counts
        row -= s.presence_penalty * (counts > 0).to(logits.dtype)


def _apply_bans(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> None:
    """EOS and stop tokens stay impossible until min_tokens outputs exist."""
    for i, r in enumerate(rows):
        s = r.sampling
        if s.banned_ids and len(r.token_ids) - r.num_prompt_tokens < s.min_tokens:
            logits[i, s.banned_ids] = float("-inf")


def _sample_random(
    logits: torch.Tensor,  # [R, V]
    rows: Sequence[SamplingRow],
) -> torch.Tensor:  # [R]
    temps = torch.tensor([r.sampling.temperature for r in rows], dtype=logits.dtype)
    logits = logits / temps.unsqueeze(1)
    top_ks = [r.sampling.top_k for r in rows]
    if any(k > 0 for k in top_ks):
        vocab = logits.shape[-1]
        ks = torch.tensor([min(k, vocab) if k > 0 else vocab for k in top_ks])
        kth = logits.topk(int(ks.max()), dim=-1).values.gather(1, (ks - 1).unsqueeze(1))
        logits.masked_fill_(logits < kth, float("-inf"))
    top_ps = torch.tensor([r.sampling.top_p for r in rows], dtype=logits.dtype)
    if bool((top_ps < 1.0).any()):
        _mask_top_p(logits, top_ps)
    probs = torch.softmax(logits, dim=-1)
    min_ps = torch.tensor([r.sampling.min_p for r in rows], dtype=probs.dtype)
    if bool((min_ps > 0).any()):
        floor = probs.max(dim=-1, keepdim=True).values * min_ps.unsqueeze(1)
        probs.masked_fill_(probs < floor, 0.0)
    points = torch.tensor(
        [
            uniform_point(r.sampling.seed, len(r.token_ids) - r.num_prompt_tokens)
            for r in rows
        ],
        dtype=torch.float64,
    )
    cdf = probs.double().cumsum(dim=-1)  # fp64: the tail of a 50k vocab stays exact
    # The first token whose CDF reaches the point; zero-probability tokens add no
    # width, so they can never be chosen (the point is never 0).
    targets = (points * cdf[:, -1]).unsqueeze(1)
    tokens = torch.searchsorted(cdf, targets).squeeze(1)
    return tokens.clamp_(max=probs.shape[-1] - 1)


def _mask_top_p(
    logits: torch.Tensor,  # [R, V], masked in place
    top_ps: torch.Tensor,  # [R]
) -> None:
    """Keep the smallest set of most likely tokens whose mass reaches top_p."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # A token is dropped when the mass before it already reaches top_p.
    drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_ps.unsqueeze(1)
    drop = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)
    logits.masked_fill_(drop, float("-inf"))
