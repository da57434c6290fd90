"""LLMEngine driven by hand: add_request / step / abort_request, on a tiny model."""

import pytest

from vllm import EngineArgs, LLMEngine, SamplingParams

PROMPTS = {
    "a": {"prompt_token_ids": [11, 22, 33, 44, 55]},
    "b": {"prompt_token_ids": list(range(100, 140))},
    "c": {"prompt_token_ids": [900, 3, 700, 17]},
}
GREEDY = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(tiny_model):
    args = EngineArgs(
        model=tiny_model("llama_gqa"), kv_cache_space=0.05, max_model_len=256
    )
    eng = LLMEngine.from_engine_args(args)
    yield eng
    eng.shutdown()


def _drain(engine: LLMEngine) -> dict[str, list]:
    """Steps until idle; -> every RequestOutput seen, per request id."""
    seen: dict[str, list] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            seen.setdefault(out.request_id, []).append(out)
    return seen


def _assert_idle(engine: LLMEngine) -> None:
    assert not engine.has_unfinished_requests()
    assert engine.get_num_unfinished_requests() == 0
    assert engine.scheduler.block_manager.num_free_blocks == engine.num_kv_blocks


@pytest.fixture(scope="module")
def alone(engine) -> dict[str, list[int]]:
    """Each prompt's greedy tokens when it runs on its own."""
    tokens = {}
    for rid, prompt in PROMPTS.items():
        engine.add_request(f"alone-{rid}", prompt, GREEDY)
        tokens[rid] = _drain(engine)[f"alone-{rid}"][-1].outputs[0].token_ids
    return tokens


def test_streaming_outputs_grow_monotonically(engine, alone):
    for rid, prompt in PROMPTS.items():
        engine.add_request(rid, prompt, GREEDY)
    assert engine.get_num_unfinished_requests() == 3
    seen = _drain(engine)
    assert set(seen) == set(PROMPTS)
    for rid, outs in seen.items():
        lengths = [len(o.outputs[0].token_ids) for o in outs]
        # One new token per step (the whole prompt fits in one step's budget).
        assert lengths == list(range(1, GREEDY.max_tokens + 1))
        for prev, cur in zip(outs, outs[1:]):
            p, c = prev.outputs[0], cur.outputs[0]
            assert c.token_ids[: len(p.token_ids)] == p.token_ids
            assert c.text.startswith(p.text)
            assert not prev.finished and p.finish_reason is None
        final = outs[-1]
        assert final.finished and final.outputs[0].finish_reason == "length"
        assert final.outputs[0].token_ids == alone[rid]
        assert final.prompt_token_ids == PROMPTS[rid]["prompt_token_ids"]
    _assert_idle(engine)


def test_streamed_text_never_retracted_with_stop_string(engine, alone):
    # A stop string spanning two tokens: while only its first part has been
    # generated, streamed text must not show it, since the match will cut it.
    tokenizer = engine.get_tokenizer()
    ids = alone["a"]
    full = tokenizer.decode(ids, skip_special_tokens=True)
    cut = len(tokenizer.decode(ids[:10], skip_special_tokens=True))
    stop = full[cut - 2 : cut + 2]
    assert full.find(stop) == cut - 2 and len(stop) == 4, "pick another split"
    params = SamplingParams(temperature=0.0, max_tokens=30, stop=stop)
    engine.add_request("s", PROMPTS["a"], params)
    outs = _drain(engine)["s"]
    final = outs[-1].outputs[0]
    assert final.text == full[: cut - 2] and final.stop_reason == stop
    for out in outs:
        assert final.text.startswith(out.outputs[0].text), out.outputs[0].text
    _assert_idle(engine)


def test_abort_mid_generation(engine, alone):
    for rid, prompt in PROMPTS.items():
        engine.add_request(rid, prompt, GREEDY)
    for _ in range(5):
        engine.step()
    held = engine.scheduler.block_manager.num_free_blocks
    engine.abort_request("b")
    # "b" had 40 + 5 tokens in the cache: its blocks come back at once.
    assert engine.scheduler.block_manager.num_free_blocks > held
    assert engine.get_num_unfinished_requests() == 2
    seen = _drain(engine)
    # Aborted requests produce no further output at all.
    assert set(seen) == {"a", "c"}
    for rid in ("a", "c"):
        assert seen[rid][-1].finished
        assert seen[rid][-1].outputs[0].token_ids == alone[rid]
    _assert_idle(engine)


def test_abort_waiting_and_unknown_requests(tiny_model, alone):
    # One sequence at a time: "b" and "c" wait while "a" runs.
    args = EngineArgs(
        model=tiny_model("llama_gqa"),
        kv_cache_space=0.05,
        max_model_len=256,
        max_num_seqs=1,
    )
    eng = LLMEngine.from_engine_args(args)
    try:
        for rid, prompt in PROMPTS.items():
            eng.add_request(rid, prompt, GREEDY)
        eng.step()
        parents = eng.output_processor.parents
        assert [r.request_id for r in eng.scheduler.waiting] == [
            child.request.request_id
            for rid in ("b", "c")
            for child in parents[rid].children
        ]
        eng.abort_request(["b", "no-such-request"])
        eng.abort_request("also-unknown")
        seen = _drain(eng)
        assert set(seen) == {"a", "c"}
        assert seen["c"][-1].outputs[0].token_ids == alone["c"]
        _assert_idle(eng)
    finally:
        eng.shutdown()


def test_abort_parent_aborts_all_completions(engine, alone):
    params = SamplingParams(temperature=1.0, seed=1, n=3, max_tokens=30)
    engine.add_request("multi", PROMPTS["b"], params)
    engine.add_request("a", PROMPTS["a"], GREEDY)
    outs = engine.step()
    multi = next(o for o in outs if o.request_id == "multi")
    assert [c.index for c in multi.outputs] == [0, 1, 2]
    engine.abort_request("multi")
    seen = _drain(engine)
    assert set(seen) == {"a"}
    assert seen["a"][-1].outputs[0].token_ids == alone["a"]
    _assert_idle(engine)


def test_request_id_reusable_after_finish(engine, alone):
    for _ in range(2):
        engine.add_request("again", PROMPTS["c"], GREEDY)
        out = _drain(engine)["again"][-1]
        assert out.outputs[0].token_ids == alone["c"]
    _assert_idle(engine)


def test_step_when_idle_returns_nothing(engine):
    assert engine.step() == []
    _assert_idle(engine)


def test_child_ids_do_not_clash_with_user_ids(tiny_model, alone):
    # n > 1 names its completions internally; a user id that looks like one of
    # those names must not be confused with them. Own engine: a clash can break
    # the workers' state.
    args = EngineArgs(
        model=tiny_model("llama_gqa"), kv_cache_space=0.05, max_model_len=256
    )
    eng = LLMEngine.from_engine_args(args)
    try:
        params = SamplingParams(temperature=0.0, n=2, max_tokens=30, ignore_eos=True)
        eng.add_request("0_x", PROMPTS["a"], GREEDY)
        eng.add_request("x", PROMPTS["c"], params)
        seen = _drain(eng)
        assert seen["0_x"][-1].outputs[0].token_ids == alone["a"]
        assert [c.token_ids for c in seen["x"][-1].outputs] == [alone["c"]] * 2
        _assert_idle(eng)
    finally:
        eng.shutdown()
