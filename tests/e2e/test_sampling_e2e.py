"""Random sampling end to end on a tiny model: seeds make it reproducible whatever
the batch, n>1 fans out, the draws follow the model's distribution, and the
truncation filters and penalties do what they say."""

import math

import pytest
import torch

from vllm import LLM, SamplingParams

PROMPT = {"prompt_token_ids": [5, 77, 301, 12, 900, 41, 8, 250]}


def _random_prompts(lengths: list[int], seed: int) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    return [
        {"prompt_token_ids": torch.randint(3, 1024, (n,), generator=gen).tolist()}
        for n in lengths
    ]


OTHERS = _random_prompts([3, 19, 40, 11], seed=21)


def _new_llm(path: str, **kwargs) -> LLM:
    return LLM(path, kv_cache_space=0.05, max_model_len=256, **kwargs)


@pytest.fixture(scope="module")
def path(tiny_model) -> str:
    return tiny_model("llama_gqa")


@pytest.fixture(scope="module")
def llm(path):
    # Logprobs of the whole vocabulary (the first-token distribution below).
    engine = _new_llm(path, max_logprobs=-1)
    yield engine
    engine.shutdown()


def _ids(llm: LLM, prompts, params) -> list[list[int]]:
    outs = llm.generate(prompts, params, use_tqdm=False)
    return [out.outputs[0].token_ids for out in outs]


def _seeded(seed: int, **kwargs) -> SamplingParams:
    base = dict(temperature=1.0, max_tokens=32, ignore_eos=True, seed=seed)
    return SamplingParams(**{**base, **kwargs})


def test_seeded_reproducible_across_instances(llm, path):
    params = [_seeded(s, top_p=0.95) for s in (1, 2, 3)]
    prompts = [PROMPT] + OTHERS[:2]
    first = _ids(llm, prompts, params)
    other = _new_llm(path, seed=1234)  # a different global seed must not matter
    try:
        assert _ids(other, prompts, params) == first
    finally:
        other.shutdown()


def test_seeded_independent_of_batch(llm):
    target = _seeded(42, temperature=0.9, top_k=50)
    alone = _ids(llm, PROMPT, target)[0]
    others = [
        SamplingParams(temperature=0.0, max_tokens=40),
        _seeded(7, temperature=1.5, repetition_penalty=1.2),
        SamplingParams(temperature=1.0, max_tokens=5),
        _seeded(9, n=3, top_p=0.5),
    ]
    first = _ids(llm, [PROMPT] + OTHERS, [target] + others)
    middle = _ids(
        llm, OTHERS[:2] + [PROMPT] + OTHERS[2:], others[:2] + [target] + others[2:]
    )
    assert first[0] == alone
    assert middle[2] == alone


def test_different_seeds_differ(llm):
    runs = [_ids(llm, PROMPT, _seeded(s))[0] for s in range(4)]
    assert len({tuple(r) for r in runs}) == 4


def test_n_completions_distinct_and_indexed(llm):
    out = llm.generate(PROMPT, _seeded(3, n=4), use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2, 3]
    assert all(len(c.token_ids) == 32 for c in out.outputs)
    assert len({tuple(c.token_ids) for c in out.outputs}) == 4
    unseeded = SamplingParams(n=3, max_tokens=32, ignore_eos=True)
    out = llm.generate(PROMPT, unseeded, use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.outputs}) == 3


def test_n_greedy_gives_identical_copies(llm):
    greedy = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    want = _ids(llm, PROMPT, greedy)[0]
    greedy_n = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True, n=3)
    out = llm.generate(PROMPT, greedy_n, use_tqdm=False)[0]
    assert [c.token_ids for c in out.outputs] == [want] * 3


def test_unseeded_reproducible_with_same_global_seed(path):
    params = SamplingParams(temperature=1.0, max_tokens=24, ignore_eos=True)
    prompts = [PROMPT] + OTHERS
    runs = []
    for seed in (0, 0, 1):
        engine = _new_llm(path, seed=seed)
        try:
            runs.append(_ids(engine, prompts, params))
        finally:
            engine.shutdown()
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


@pytest.mark.parametrize(
    "filters",
    [dict(top_k=1), dict(min_p=1.0), dict(top_p=1e-6)],
    ids=["top_k=1", "min_p=1", "top_p=tiny"],
)
def test_degenerate_filters_equal_greedy(llm, filters):
    prompts = [PROMPT] + OTHERS
    greedy = _ids(llm, prompts, SamplingParams(temperature=0.0, max_tokens=24))
    params = SamplingParams(temperature=1.5, max_tokens=24, **filters)
    assert _ids(llm, prompts, params) == greedy


def _first_token_probs(llm: LLM, temperature: float) -> torch.Tensor:
    """-> [vocab] the model's first-token distribution at this temperature."""
    vocab = llm.llm_engine.config.model_config.vocab_size
    params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=vocab)
    entry = llm.generate(PROMPT, params, use_tqdm=False)[0].outputs[0].logprobs[0]
    logprobs = torch.full((vocab,), -math.inf)
    for tok, lp in entry.items():
        logprobs[tok] = lp.logprob
    return torch.softmax(logprobs / temperature, dim=-1)


def test_draws_follow_the_distribution(llm):
    # At this temperature two tokens share ~70% of the mass and a long tail the
    # rest, so a wrong temperature or a biased draw moves the counts by many sigma.
    temperature, draws = 0.3, 800
    probs = _first_token_probs(llm, temperature)
    params = SamplingParams(temperature=temperature, max_tokens=1, n=draws, seed=5)
    out = llm.generate(PROMPT, params, use_tqdm=False)[0]
    counts = torch.bincount(
        torch.tensor([c.token_ids[0] for c in out.outputs]), minlength=len(probs)
    )
    top = torch.topk(probs, 5)
    assert 0.2 < top.values[0] < 0.9
    buckets = [(top.indices[i : i + 1], float(top.values[i])) for i in range(5)]
    rest = torch.ones_like(probs, dtype=torch.bool)
    rest[top.indices] = False
    buckets.append((rest.nonzero()[:, 0], float(probs[rest].sum())))
    for ids, p in buckets:
        sigma = math.sqrt(draws * p * (1 - p))
        assert abs(int(counts[ids].sum()) - draws * p) < 5 * sigma + 1


def _first_tokens(llm: LLM, params: SamplingParams) -> set[int]:
    out = llm.generate(PROMPT, params, use_tqdm=False)[0]
    return {c.token_ids[0] for c in out.outputs}


def test_top_k_and_top_p_restrict_the_support(llm):
    temperature, draws = 0.3, 300
    probs = _first_token_probs(llm, temperature)
    order = torch.argsort(probs, descending=True).tolist()
    common = dict(temperature=temperature, max_tokens=1, n=draws, seed=8)
    # The third token keeps ~4% of the renormalised mass: it must show up.
    assert _first_tokens(llm, SamplingParams(top_k=3, **common)) == set(order[:3])
    # The nucleus: the shortest prefix of the sorted vocabulary reaching top_p.
    cumulative = torch.cumsum(probs[order], 0)
    size = int((cumulative < 0.5).sum()) + 1
    assert 1 < size < 10
    nucleus = _first_tokens(llm, SamplingParams(top_p=0.5, **common))
    assert nucleus == set(order[:size])
    assert len(_first_tokens(llm, SamplingParams(**common))) > size


def _repeats(ids: list[int]) -> int:
    return len(ids) - len(set(ids))


@pytest.mark.parametrize(
    "penalty",
    [
        dict(repetition_penalty=3.0),
        dict(frequency_penalty=2.0),
        dict(presence_penalty=2.0),
    ],
    ids=["repetition", "frequency", "presence"],
)
def test_penalties_reduce_repetition(llm, penalty):
    prompts = [PROMPT] + OTHERS
    base = dict(temperature=0.0, max_tokens=48, ignore_eos=True)
    plain = _ids(llm, prompts, SamplingParams(**base))
    penalised = _ids(llm, prompts, SamplingParams(**base, **penalty))
    assert sum(map(_repeats, plain)) > 0  # the unpenalised model does repeat
    assert penalised != plain
    assert sum(map(_repeats, penalised)) < sum(map(_repeats, plain))
