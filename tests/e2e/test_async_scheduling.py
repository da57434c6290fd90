"""--async-scheduling keeps one step in flight: outputs must be exactly those of
the synchronous engine (greedy, seeded sampling, logprobs, stop strings,
preemption, abort), and no token past a stop may reach the user."""

import pytest

from vllm import LLM, SamplingParams

BLOCK_SIZE = 16
NUM_BLOCKS = 20  # too few for the batch: forces preemption
MAX_MODEL_LEN = NUM_BLOCKS * BLOCK_SIZE

PROMPTS = [
    {"prompt_token_ids": [(7 * i + 13 * j) % 900 + 5 for j in range(n)]}
    for i, n in enumerate([12, 30, 45, 21, 60, 8, 38, 52])
]


def _llm(path: str, async_scheduling: bool) -> LLM:
    return LLM(
        path,
        block_size=BLOCK_SIZE,
        num_gpu_blocks_override=NUM_BLOCKS,
        max_model_len=MAX_MODEL_LEN,
        async_scheduling=async_scheduling,
    )


@pytest.fixture(scope="module")
def engines(tiny_model):
    path = tiny_model("llama_gqa")
    sync, asyn = _llm(path, False), _llm(path, True)
    yield sync, asyn
    sync.shutdown()
    asyn.shutdown()


def _assert_same(got, want) -> None:
    """Tokens, text and finish reasons exactly; logprobs to 1e-4, since another
    batch composition changes float sums in the last bits."""
    for g, w in zip(got, want, strict=True):
        for cg, cw in zip(g.outputs, w.outputs, strict=True):
            assert (cg.token_ids, cg.text, cg.finish_reason) == (
                cw.token_ids,
                cw.text,
                cw.finish_reason,
            )
            if cw.logprobs is None:
                assert cg.logprobs is None
                continue
            for pg, pw in zip(cg.logprobs, cw.logprobs, strict=True):
                assert pg.keys() == pw.keys()
                for t in pw:
                    assert pg[t].logprob == pytest.approx(pw[t].logprob, abs=1e-4)


PARAMS = {
    "greedy": SamplingParams(temperature=0.0, max_tokens=40),
    "seeded": SamplingParams(temperature=1.0, top_p=0.9, seed=3, max_tokens=40),
    "logprobs_n2": SamplingParams(temperature=0.8, n=2, logprobs=3, max_tokens=24),
    "unseeded": SamplingParams(temperature=1.0, max_tokens=1),
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_async_equals_sync_under_preemption(engines, name):
    sync, asyn = engines
    before = asyn.llm_engine.scheduler.num_preemptions
    want = sync.generate(PROMPTS, PARAMS[name], use_tqdm=False)
    got = asyn.generate(PROMPTS, PARAMS[name], use_tqdm=False)
    _assert_same(got, want)
    if name != "unseeded":
        assert asyn.llm_engine.scheduler.num_preemptions > before
    assert not asyn.llm_engine.steps.in_flight  # an idle engine holds no step


def test_stop_strings_and_eos_drop_the_token_in_flight(engines):
    sync, asyn = engines
    greedy = sync.generate(PROMPTS[:4], PARAMS["greedy"], use_tqdm=False)
    # Stop on a string the greedy text contains, so the step in flight when it
    # matches has already computed one more token, which must not show.
    stops = [out.outputs[0].text[5:9] for out in greedy]
    params = [SamplingParams(temperature=0.0, max_tokens=40, stop=[s]) for s in stops]
    want = sync.generate(PROMPTS[:4], params, use_tqdm=False)
    got = asyn.generate(PROMPTS[:4], params, use_tqdm=False)
    _assert_same(got, want)
    for out in got:
        assert out.outputs[0].finish_reason == "stop"
        assert len(out.outputs[0].token_ids) < 40
    free = asyn.llm_engine.scheduler.block_manager
    assert free.num_free_blocks == free.num_blocks


def _stream(llm: LLM, abort_after: int) -> tuple[dict[str, list[int]], int]:
    """Steps the engine by hand and aborts request '1' after a few steps.
    -> (last tokens seen per request, outputs of '1' seen after the abort)."""
    engine = llm.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=30)
    for i, prompt in enumerate(PROMPTS[:3]):
        engine.add_request(str(i), prompt, params)
    tokens: dict[str, list[int]] = {}
    steps = late = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens[out.request_id] = list(out.outputs[0].token_ids)
            late += steps >= abort_after and out.request_id == "1"
        steps += 1
        if steps == abort_after:
            engine.abort_request("1")
    return tokens, late


def test_abort_while_a_step_is_in_flight(engines):
    sync, asyn = engines
    (want, _), (got, late) = _stream(sync, 6), _stream(asyn, 6)
    assert got["0"] == want["0"] and got["2"] == want["2"]
    assert len(got["0"]) == 30
    assert late == 0  # nothing of an aborted request after the abort
    assert got["1"] and got["1"] == want["1"][: len(got["1"])]
    bm = asyn.llm_engine.scheduler.block_manager
    assert bm.num_free_blocks == bm.num_blocks
    assert asyn.llm_engine.scheduler.requests == {}
    assert not asyn.llm_engine.steps.in_flight
