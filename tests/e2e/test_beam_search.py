"""LLM.beam_search (vllm/beam_search.py) on a tiny random Llama, checked against
searches computed by hand from the engine's own logprobs."""

import pytest

from vllm import LLM, BeamSearchParams, SamplingParams

PROMPT = [5, 17, 33, 90, 4]


@pytest.fixture(scope="module")
def llm(tiny_model):
    engine = LLM(
        tiny_model("llama_gqa"), kv_cache_space=0.05, enable_prefix_caching=True
    )
    yield engine
    engine.shutdown()


def _next_logprobs(llm, tokens, k):
    params = SamplingParams(max_tokens=1, logprobs=k, temperature=0.0, ignore_eos=True)
    out = llm.generate({"prompt_token_ids": tokens}, params, use_tqdm=False)[0]
    return {t: lp.logprob for t, lp in out.outputs[0].logprobs[0].items()}


def test_width_one_is_greedy(llm):
    greedy = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    want = llm.generate({"prompt_token_ids": PROMPT}, greedy, use_tqdm=False)[0]
    params = BeamSearchParams(beam_width=1, max_tokens=6, ignore_eos=True)
    (got,) = llm.beam_search([{"prompt_token_ids": PROMPT}], params)
    (seq,) = got.sequences
    assert seq.output_tokens == want.outputs[0].token_ids
    assert seq.tokens[: len(PROMPT)] == PROMPT and seq.finish_reason == "length"


def test_two_steps_keep_the_best_continuation_of_the_kept_beams(llm):
    width = 2
    first = _next_logprobs(llm, PROMPT, 2 * width)
    kept = sorted(first, key=first.get, reverse=True)[:width]
    totals = {}
    for t1 in kept:
        second = _next_logprobs(llm, PROMPT + [t1], 2 * width)
        for t2, lp in second.items():
            totals[(t1, t2)] = first[t1] + lp
    best = sorted(totals, key=totals.get, reverse=True)[:width]
    params = BeamSearchParams(beam_width=width, max_tokens=2, ignore_eos=True)
    (got,) = llm.beam_search([{"prompt_token_ids": PROMPT}], params)
    assert [tuple(s.output_tokens) for s in got.sequences] == best
    for seq in got.sequences:
        assert seq.cum_logprob == pytest.approx(totals[tuple(seq.output_tokens)])
    assert [s.cum_logprob for s in got.sequences] == sorted(
        (s.cum_logprob for s in got.sequences), reverse=True
    )


def test_beam_search_validates_its_parameters():
    with pytest.raises(ValueError, match="beam_width must be >= 1"):
        BeamSearchParams(beam_width=0, max_tokens=3)
