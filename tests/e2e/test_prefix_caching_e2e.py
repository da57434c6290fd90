"""Prefix caching end to end on a tiny model: outputs are the same with and without
it (greedy, seeded, logprobs, prompt logprobs, n > 1, preemption, abort, chunked
prefill), and the cache is really used."""

import pytest
import torch

from vllm import LLM, SamplingParams

BLOCK_SIZE = 16
MAX_MODEL_LEN = 512
NEW_TOKENS = 24


def _tokens(n: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, 1024, (n,), generator=gen).tolist()


# Two system prompts (one of them block aligned) and suffixes of assorted
# lengths, one of them empty: a prompt that is exactly a cached prefix.
PREFIXES = [_tokens(40, 1), _tokens(64, 2)]
SUFFIX_LENS = [0, 1, 7, 16, 23, 33]
PROMPTS = [
    {"prompt_token_ids": PREFIXES[i % 2] + _tokens(n, 100 + i)}
    for i, n in enumerate(SUFFIX_LENS)
]


def _llm(path: str, caching: bool, **kwargs) -> LLM:
    kwargs.setdefault("kv_cache_space", 0.05)
    kwargs.setdefault("max_model_len", MAX_MODEL_LEN)
    return LLM(
        path,
        block_size=BLOCK_SIZE,
        enable_prefix_caching=caching,
        **kwargs,
    )


@pytest.fixture(scope="module")
def path(tiny_model) -> str:
    return tiny_model("llama_gqa")


@pytest.fixture(scope="module")
def plain(path):
    llm = _llm(path, caching=False)
    yield llm
    llm.shutdown()


@pytest.fixture(scope="module")
def cached(path):
    llm = _llm(path, caching=True)
    yield llm
    llm.shutdown()


def _stats(llm: LLM):
    return llm.llm_engine.scheduler.prefix_cache_stats


def _ids(outputs) -> list[list[list[int]]]:
    return [[c.token_ids for c in out.outputs] for out in outputs]


def _run(llm: LLM, prompts, params) -> tuple[list, int]:
    """-> (outputs, prompt tokens served from the cache during the run)."""
    before = _stats(llm).hits
    outputs = llm.generate(prompts, params, use_tqdm=False)
    engine = llm.llm_engine
    assert not engine.has_unfinished_requests()
    assert engine.scheduler.block_manager.num_free_blocks == engine.num_kv_blocks
    return outputs, _stats(llm).hits - before


def test_flag_reaches_the_block_manager(plain, cached):
    assert not plain.llm_engine.scheduler.block_manager.enable_caching
    assert cached.llm_engine.scheduler.block_manager.enable_caching
    assert not plain.llm_engine.config.cache_config.enable_prefix_caching


def test_greedy_identical_and_cache_hit(plain, cached):
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    want, _ = _run(plain, PROMPTS, params)
    assert _stats(plain).hits == 0
    got, hits = _run(cached, PROMPTS, params)
    assert _ids(got) == _ids(want)
    # Each prefix is computed once, then served: at least the full blocks of
    # the prefix for the other prompts that share it.
    assert hits >= 2 * (2 * BLOCK_SIZE) + 2 * (4 * BLOCK_SIZE)
    # Again: now every prompt's full blocks (but its last token) are cached.
    again, hits = _run(cached, PROMPTS, params)
    assert _ids(again) == _ids(want)
    prompt_lens = [len(p["prompt_token_ids"]) for p in PROMPTS]
    assert hits == sum((n - 1) // BLOCK_SIZE * BLOCK_SIZE for n in prompt_lens)


def test_seeded_sampling_identical(plain, cached):
    variants = [
        dict(temperature=1.0),
        dict(temperature=0.7, top_p=0.9),
        dict(temperature=1.3, top_k=20),
        dict(temperature=0.9, min_p=0.05, repetition_penalty=1.3),
        dict(temperature=1.0, frequency_penalty=0.8, presence_penalty=0.5),
        dict(temperature=0.8, top_k=5, top_p=0.8),
    ]
    params = [
        SamplingParams(seed=10 + i, max_tokens=NEW_TOKENS, ignore_eos=True, **v)
        for i, v in enumerate(variants)
    ]
    want, _ = _run(plain, PROMPTS, params)
    got, hits = _run(cached, PROMPTS, params)
    assert hits > 0
    assert _ids(got) == _ids(want)


def test_logprobs_identical(plain, cached):
    params = SamplingParams(
        temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=3
    )
    want, _ = _run(plain, PROMPTS, params)
    got, hits = _run(cached, PROMPTS, params)
    assert hits > 0
    for w, g in zip(want, got):
        wc, gc = w.outputs[0], g.outputs[0]
        assert gc.token_ids == wc.token_ids
        assert gc.cumulative_logprob == pytest.approx(wc.cumulative_logprob, abs=1e-3)
        for wpos, gpos in zip(wc.logprobs, gc.logprobs):
            assert gpos.keys() == wpos.keys()
            for tok, lp in wpos.items():
                assert gpos[tok].logprob == pytest.approx(lp.logprob, abs=1e-4)


def test_n_completions_share_the_prompt(plain, cached):
    params = SamplingParams(
        n=4, temperature=1.0, seed=7, max_tokens=NEW_TOKENS, ignore_eos=True
    )
    prompt = {"prompt_token_ids": _tokens(57, 9)}  # new to the cache
    want, _ = _run(plain, [prompt], params)
    got, hits = _run(cached, [prompt], params)
    assert _ids(got) == _ids(want)
    assert len({tuple(c.token_ids) for c in got[0].outputs}) == 4
    # The first completion computes the prompt; the three others reuse its
    # three full blocks.
    assert hits == 3 * (3 * BLOCK_SIZE)


def test_prompt_logprobs_are_complete_and_identical(plain, cached):
    params = SamplingParams(
        temperature=0.0, max_tokens=8, ignore_eos=True, prompt_logprobs=2
    )
    cached.generate(PROMPTS, SamplingParams(max_tokens=1), use_tqdm=False)  # warm
    want, _ = _run(plain, PROMPTS, params)
    got, hits = _run(cached, PROMPTS, params)
    # Cached positions have no logprobs, so these requests compute everything.
    assert hits == 0
    for prompt, w, g in zip(PROMPTS, want, got):
        ids = prompt["prompt_token_ids"]
        assert g.outputs[0].token_ids == w.outputs[0].token_ids
        assert len(g.prompt_logprobs) == len(ids) and g.prompt_logprobs[0] is None
        for pos in range(1, len(ids)):
            assert g.prompt_logprobs[pos][ids[pos]].logprob == pytest.approx(
                w.prompt_logprobs[pos][ids[pos]].logprob, abs=1e-4
            )


def test_identical_under_preemption(path, plain):
    # 20 blocks of 16 tokens cannot hold six sequences of up to 121 tokens even
    # with their prefixes shared.
    tight = _llm(path, caching=True, num_gpu_blocks_override=20, max_model_len=20 * 16)
    try:
        params = [
            SamplingParams(seed=i, temperature=0.9, max_tokens=64, ignore_eos=True)
            for i in range(len(PROMPTS))
        ]
        want, _ = _run(plain, PROMPTS, params)
        scheduler = tight.llm_engine.scheduler
        got, hits = _run(tight, PROMPTS, params)
        assert scheduler.num_preemptions > 0
        assert hits > 0
        assert _ids(got) == _ids(want)
    finally:
        tight.shutdown()


def test_chunked_prefill_with_caching_identical(path, plain):
    chunked = _llm(path, caching=True, max_num_batched_tokens=16)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
        want, _ = _run(plain, PROMPTS, params)
        got, hits = _run(chunked, PROMPTS, params)
        assert hits > 0
        assert _ids(got) == _ids(want)
    finally:
        chunked.shutdown()


def test_abort_mid_run_keeps_the_others_right(plain, cached):
    params = [
        SamplingParams(seed=i, temperature=1.0, max_tokens=NEW_TOKENS, ignore_eos=True)
        for i in range(len(PROMPTS))
    ]
    want, _ = _run(plain, PROMPTS, params)
    engine = cached.llm_engine
    for i, (prompt, p) in enumerate(zip(PROMPTS, params)):
        engine.add_request(f"ab-{i}", prompt, p)
    for _ in range(3):
        engine.step()
    engine.abort_request(["ab-0", "ab-3"])
    finished = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out.outputs[0].token_ids
    assert set(finished) == {f"ab-{i}" for i in (1, 2, 4, 5)}
    for i in (1, 2, 4, 5):
        assert finished[f"ab-{i}"] == want[i].outputs[0].token_ids
    assert engine.scheduler.block_manager.num_free_blocks == engine.num_kv_blocks
