"""A KV cache too small for the batch forces preemption (recompute); outputs must
not change. Chunked prefill must not change them either."""

import pytest
import torch

from vllm import LLM, SamplingParams

# 24 blocks x 16 tokens = 384 tokens of KV for 8 requests of up to 124 tokens.
BLOCK_SIZE = 16
NUM_BLOCKS = 24
MAX_MODEL_LEN = NUM_BLOCKS * BLOCK_SIZE
NEW_TOKENS = 64


def _random_prompts(lengths: list[int], seed: int) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    return [
        {"prompt_token_ids": torch.randint(3, 1024, (n,), generator=gen).tolist()}
        for n in lengths
    ]


PROMPTS = _random_prompts([20, 26, 31, 37, 43, 48, 54, 60], seed=11)


@pytest.fixture(scope="module")
def ample(tiny_model):
    llm = LLM(tiny_model("llama_gqa"), kv_cache_space=0.05, max_model_len=MAX_MODEL_LEN)
    yield llm
    llm.shutdown()


@pytest.fixture(scope="module")
def tight(tiny_model):
    llm = LLM(
        tiny_model("llama_gqa"),
        block_size=BLOCK_SIZE,
        num_gpu_blocks_override=NUM_BLOCKS,
        max_model_len=MAX_MODEL_LEN,
    )
    yield llm
    llm.shutdown()


def _run_both(ample: LLM, tight: LLM, params) -> tuple[list, list, int]:
    """-> (ample outputs, tight outputs, preemptions during the tight run)."""
    want = ample.generate(PROMPTS, params, use_tqdm=False)
    scheduler = tight.llm_engine.scheduler
    before = scheduler.num_preemptions
    got = tight.generate(PROMPTS, params, use_tqdm=False)
    return want, got, scheduler.num_preemptions - before


def _tokens(outputs) -> list[list[list[int]]]:
    return [[c.token_ids for c in out.outputs] for out in outputs]


def _assert_cache_released(llm: LLM) -> None:
    engine = llm.llm_engine
    assert not engine.has_unfinished_requests()
    assert engine.scheduler.block_manager.num_free_blocks == engine.num_kv_blocks


def test_tight_cache_is_really_tight(tight):
    assert tight.llm_engine.num_kv_blocks == NUM_BLOCKS
    needed = sum(len(p["prompt_token_ids"]) + NEW_TOKENS for p in PROMPTS)
    assert needed > NUM_BLOCKS * BLOCK_SIZE


def test_greedy_identical_under_preemption(ample, tight):
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    want, got, preemptions = _run_both(ample, tight, params)
    assert preemptions > 0
    assert _tokens(got) == _tokens(want)
    assert all(len(out.outputs[0].token_ids) == NEW_TOKENS for out in got)
    _assert_cache_released(tight)


def test_seeded_sampling_identical_under_preemption(ample, tight):
    # Mixed settings, including penalties: they read the outputs generated before
    # preemption, which the workers must get back when the request resumes.
    variants = [
        dict(temperature=1.0),
        dict(temperature=0.7, top_p=0.9),
        dict(temperature=1.3, top_k=20),
        dict(temperature=0.9, min_p=0.05, repetition_penalty=1.3),
        dict(temperature=1.0, frequency_penalty=0.8, presence_penalty=0.5),
        dict(temperature=1.0, n=2),
        dict(temperature=0.0, presence_penalty=1.5),
        dict(temperature=0.8, top_k=5, top_p=0.8),
    ]
    params = [
        SamplingParams(seed=100 + i, max_tokens=NEW_TOKENS, ignore_eos=True, **v)
        for i, v in enumerate(variants)
    ]
    want, got, preemptions = _run_both(ample, tight, params)
    assert preemptions > 0
    assert _tokens(got) == _tokens(want)
    _assert_cache_released(tight)


def test_logprobs_identical_under_preemption(ample, tight):
    params = SamplingParams(
        temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=2
    )
    want, got, preemptions = _run_both(ample, tight, params)
    assert preemptions > 0
    for w, g in zip(want, got):
        wc, gc = w.outputs[0], g.outputs[0]
        assert gc.token_ids == wc.token_ids
        assert len(gc.logprobs) == NEW_TOKENS
        assert gc.cumulative_logprob == pytest.approx(wc.cumulative_logprob, abs=1e-3)


def test_prompt_logprobs_not_repeated_after_preemption(ample, tight):
    # A preempted request recomputes its prompt; its prompt logprobs must still
    # be reported once per prompt position.
    params = SamplingParams(
        temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, prompt_logprobs=1
    )
    want, got, preemptions = _run_both(ample, tight, params)
    assert preemptions > 0
    for prompt, w, g in zip(PROMPTS, want, got):
        ids = prompt["prompt_token_ids"]
        assert len(w.prompt_logprobs) == len(ids)
        assert len(g.prompt_logprobs) == len(ids)
        for pos in range(1, len(ids)):
            assert g.prompt_logprobs[pos][ids[pos]].logprob == pytest.approx(
                w.prompt_logprobs[pos][ids[pos]].logprob, abs=1e-4
            )


def test_chunked_prefill_matches_default(ample, tiny_model):
    prompts = _random_prompts([50, 50, 50, 7], seed=5)
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    want = ample.generate(prompts, params, use_tqdm=False)
    chunked = LLM(
        tiny_model("llama_gqa"),
        kv_cache_space=0.05,
        max_model_len=MAX_MODEL_LEN,
        max_num_batched_tokens=16,
    )
    try:
        engine = chunked.llm_engine
        for i, prompt in enumerate(prompts):
            engine.add_request(f"c{i}", prompt, params)
        first_step, finished, step = {}, {}, 0
        while engine.has_unfinished_requests():
            step += 1
            for out in engine.step():
                first_step.setdefault(out.request_id, step)
                if out.finished:
                    finished[out.request_id] = out.outputs[0].token_ids
    finally:
        chunked.shutdown()
    # 16 tokens per step: a 50-token prompt needs 4 steps before its first token.
    assert first_step["c0"] >= 4
    got = [finished[f"c{i}"] for i in range(len(prompts))]
    assert got == [out.outputs[0].token_ids for out in want]
