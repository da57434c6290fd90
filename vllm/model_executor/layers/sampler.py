"""Turns logits into next tokens.

Random sampling inverts the CDF of the filtered distribution at a point
``u in (0, 1]``, and ``u`` for a request's i-th output is a hash of ``(seed, i)``
alone. A request's tokens therefore depend only on its own seed and logits: not on
batch composition, on preemption, or on which rank samples, which is what lets every
SPMD rank sample identically. (One hashed number per row also costs far less than a
vocabulary-sized noise draw.)
"""

from collections.abc import Sequence

import torch

from vllm import _custom_ops as ops
from vllm.messages import Logprobs
from vllm.model_executor.layers.sampling_tensors import (
    SamplingRow,
    SamplingTensors,
    uniform_points,
)

_MASK64 = (1 << 64) - 1


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
    params: SamplingTensors | None = None,  # the rows' parameters, if at hand
    token_ids: tuple[torch.Tensor, torch.Tensor] | None = None,
    kernels: bool = True,
) -> tuple[list[int], list[Logprobs | None]]:
    """``token_ids``, if at hand: (table [M, >= longest row] int64, the row of
    table [N] int64 holding each row's prompt and outputs, rows[i].token_ids,
    padded); the penalties then read it instead of the Python lists.
    ``kernels=False`` draws with the pure-torch reference of the compiled op."""
    if params is None:
        params = SamplingTensors.from_rows(rows)
    wants_logprobs = any(r.sampling.logprobs >= 0 for r in rows)
    raw = torch.log_softmax(logits, dim=-1) if wants_logprobs else None
    _apply_allowed_and_bias(logits, rows)
    _apply_penalties(logits, rows, params, token_ids)
    _apply_bans(logits, rows)
    random_mask = params.temperature > 0.0
    if bool(random_mask.all()):  # the common all-random batch: no argmax pass
        tokens = _sample_random(logits, params, kernels)
    else:
        tokens = logits.argmax(dim=-1)
        if bool(random_mask.any()):
            picked = random_mask.nonzero().squeeze(1)
            tokens[picked] = _sample_random(
                logits[picked], params.select(picked), kernels
            )
    token_list = tokens.tolist()
    if raw is None:
        return token_list, [None] * len(rows)
    return token_list, [
        logprobs_at(raw[i], token_list[i], r.sampling.logprobs, r.sampling.logprob_ids)
        if r.sampling.logprobs >= 0
        else None
        for i, r in enumerate(rows)
    ]


def logprobs_at(
    logprobs: torch.Tensor,  # [V]
    token_id: int,
    k: int,
    only: Sequence[int] = (),
) -> Logprobs:
    """The chosen token's logprob and rank, then the top k, or the tokens of
    ``only`` (logprob_token_ids) where given."""
    chosen = logprobs[token_id]
    rank = int((logprobs > chosen).sum()) + 1
    ids, values = [token_id], [float(chosen)]
    if only:
        ids += list(only)
        values += logprobs[list(only)].tolist()
    elif k > 0:
        top = logprobs.topk(k)
        ids += top.indices.tolist()
        values += top.values.tolist()
    return Logprobs(token_ids=ids, logprobs=values, rank=rank)


def _apply_penalties(
    logits: torch.Tensor,  # [N, V]
    rows: Sequence[SamplingRow],
    params: SamplingTensors,
    token_ids: tuple[torch.Tensor, torch.Tensor] | None,  # as sample's
) -> None:
    """All penalised rows at once: token counts by one scatter over the rows'
    (padded) tokens."""
    on = (
        (params.presence_penalty != 0)
        | (params.frequency_penalty != 0)
        | (params.repetition_penalty != 1)
    )
    if not bool(on.any()):
        return
    picked = on.nonzero().squeeze(1)
    chosen = [rows[i] for i in picked.tolist()]
    lengths = torch.tensor([len(r.token_ids) for r in chosen])
    prompt = torch.tensor([r.num_prompt_tokens for r in chosen]).unsqueeze(1)
    width = int(lengths.max())
    if token_ids is None:
        tokens = torch.zeros(len(chosen), width, dtype=torch.long)
        for i, r in enumerate(chosen):
            tokens[i, : len(r.token_ids)] = torch.tensor(r.token_ids)
    else:
        table, table_rows = token_ids
        tokens = table[table_rows[picked], :width]
    vocab = logits.shape[-1]
    column = torch.arange(width).unsqueeze(0)
    # Padding and the other kind of token go to a spare column past the vocab.
    outputs = torch.where(
        (column >= prompt) & (column < lengths[:, None]), tokens, vocab
    )
    counts = torch.zeros(len(chosen), vocab + 1, dtype=logits.dtype)
    counts.scatter_add_(1, outputs, torch.ones_like(outputs, dtype=logits.dtype))
    counts = counts[:, :vocab]
    in_prompt = torch.zeros(len(chosen), vocab + 1, dtype=torch.bool)
    in_prompt.scatter_(1, torch.where(column < prompt, tokens, vocab), True)
    seen = (counts > 0) | in_prompt[:, :vocab]
    rows_logits = logits[picked]
    rep = params.repetition_penalty[picked].unsqueeze(1)
    penalised = torch.where(rows_logits > 0, rows_logits / rep, rows_logits * rep)
    rows_logits = torch.where(seen & (rep != 1.0), penalised, rows_logits)
    rows_logits -= params.frequency_penalty[picked].unsqueeze(1) * counts
    presence = params.presence_penalty[picked].unsqueeze(1)
    rows_logits -= presence * (counts > 0).to(logits.dtype)
    logits[picked] = rows_logits


def _apply_allowed_and_bias(
    logits: torch.Tensor,  # [N, V], changed in place
    rows: Sequence[SamplingRow],
) -> None:
    """allowed_token_ids masks every other token; logit_bias adds to logits.
    Before the penalties, as in vLLM."""
    for i, r in enumerate(rows):
        s = r.sampling
        if s.allowed_ids:
            keep = logits[i, s.allowed_ids].clone()
            logits[i].fill_(float("-inf"))
            logits[i, s.allowed_ids] = keep
        if s.bias_ids:
            logits[i, s.bias_ids] += torch.tensor(s.bias_values, dtype=logits.dtype)


def _apply_bans(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> None:
    """EOS and stop tokens stay impossible until min_tokens outputs exist."""
    for i, r in enumerate(rows):
        s = r.sampling
        if s.banned_ids and len(r.token_ids) - r.num_prompt_tokens < s.min_tokens:
            logits[i, s.banned_ids] = float("-inf")


def _sample_random(
    logits: torch.Tensor,  # [R, V]
    params: SamplingTensors,  # of the R rows
    kernels: bool,
) -> torch.Tensor:  # [R]
    temperature = params.temperature
    top_ks, top_ps, min_ps = params.top_k, params.top_p, params.min_p
    if bool((top_ks > 0).any() | (top_ps < 1.0).any() | (min_ps > 0).any()):
        # Filters act on the tempered distribution; masked tokens become -inf.
        logits = logits / temperature.unsqueeze(1)
        temperature = torch.ones_like(temperature)
        if bool((top_ks > 0).any()):
            vocab = logits.shape[-1]
            ks = torch.where(top_ks > 0, top_ks.clamp(max=vocab), vocab)
            top = logits.topk(int(ks.max()), dim=-1).values
            kth = top.gather(1, (ks - 1).unsqueeze(1))
            logits.masked_fill_(logits < kth, float("-inf"))
        if bool((top_ps < 1.0).any()):
            _mask_top_p(logits, top_ps)
        if bool((min_ps > 0).any()):
            probs = torch.softmax(logits, dim=-1)
            floor = probs.max(dim=-1, keepdim=True).values * min_ps.unsqueeze(1)
            logits.masked_fill_(probs < floor, float("-inf"))
    tokens = torch.empty(logits.shape[0], dtype=torch.long)
    points = uniform_points(params.seed, params.output_index)
    ops.sample_from_logits(tokens, logits, temperature, points, kernels)
    return tokens


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
