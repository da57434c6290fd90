"""AsyncLLMEngine on a tiny model: streamed outputs match LLM's, add errors come
before any output, aborts and early closes free the request's blocks, an idle
engine thread sleeps, and a failing engine ends every stream."""

import asyncio
import threading
import time

import psutil
import pytest

from vllm import LLM, EngineArgs, SamplingParams
from vllm.engine.async_llm_engine import AsyncLLM, AsyncLLMEngine, EngineDeadError

PROMPTS = [[11, 22, 33, 44, 55], list(range(100, 140)), [900, 3, 700, 17]]
GREEDY = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
LONG = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)


def _args(model: str) -> EngineArgs:
    return EngineArgs(model=model, kv_cache_space=0.05, max_model_len=256)


@pytest.fixture(scope="module")
def engine(tiny_model):
    eng = AsyncLLMEngine.from_engine_args(_args(tiny_model("llama_gqa")))
    yield eng
    eng.shutdown()


def _blocks(engine: AsyncLLMEngine) -> tuple[int, int]:
    manager = engine.engine.scheduler.block_manager
    return manager.num_free_blocks, manager.num_blocks


async def _until_idle(engine: AsyncLLMEngine, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while engine.engine.has_unfinished_requests() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def test_streams_match_offline_llm(engine, tiny_model):
    llm = LLM(tiny_model("llama_gqa"), kv_cache_space=0.05, max_model_len=256)
    want = llm.generate(
        [{"prompt_token_ids": p} for p in PROMPTS], GREEDY, use_tqdm=False
    )
    llm.shutdown()

    async def consume(i: int):
        seen = []
        async for out in engine.generate(
            {"prompt_token_ids": PROMPTS[i]}, GREEDY, f"r{i}"
        ):
            seen.append(out)
        return seen

    async def run():
        return await asyncio.gather(*(consume(i) for i in range(len(PROMPTS))))

    for i, seen in enumerate(asyncio.run(run())):
        assert [o.finished for o in seen] == [False] * (len(seen) - 1) + [True]
        lengths = [len(o.outputs[0].token_ids) for o in seen]
        assert lengths == sorted(lengths)  # cumulative, never taken back
        final = seen[-1].outputs[0]
        assert final.token_ids == want[i].outputs[0].token_ids
        assert final.text == want[i].outputs[0].text
        assert final.finish_reason == "length"
    assert AsyncLLM is AsyncLLMEngine


def test_add_errors_come_before_any_output(engine):
    async def run():
        with pytest.raises(ValueError, match="empty"):
            await engine.add_request("bad1", {"prompt_token_ids": []}, GREEDY)
        with pytest.raises(ValueError, match="vocabulary"):
            gen = engine.generate({"prompt_token_ids": [10**6]}, GREEDY, "bad2")
            await gen.__anext__()
        with pytest.raises(TypeError, match="prompt"):  # a wrong type
            await engine.add_request("bad3", 12345, GREEDY)
        stream = await engine.add_request("dup", {"prompt_token_ids": [1, 2]}, GREEDY)
        with pytest.raises(ValueError, match="already in use"):
            await engine.add_request("dup", {"prompt_token_ids": [3, 4]}, GREEDY)
        outs = [o async for o in stream]
        return outs[-1]

    last = asyncio.run(run())
    assert last.finished and len(last.outputs[0].token_ids) == 20
    assert _blocks(engine)[0] == _blocks(engine)[1]


def test_abort_ends_stream_and_frees_blocks(engine):
    async def run():
        stream = await engine.add_request(
            "long", {"prompt_token_ids": PROMPTS[1]}, LONG
        )
        seen = [await stream.__anext__(), await stream.__anext__()]
        assert _blocks(engine)[0] < _blocks(engine)[1]
        await engine.abort("long")
        rest = [o async for o in stream]
        await _until_idle(engine)
        return seen, rest

    seen, rest = asyncio.run(run())
    assert not seen[-1].finished and rest == []
    assert not engine.engine.has_unfinished_requests()
    assert _blocks(engine)[0] == _blocks(engine)[1]


def test_leaving_early_aborts(engine):
    async def break_out():
        async for out in engine.generate({"prompt_token_ids": PROMPTS[0]}, LONG, "b"):
            if len(out.outputs[0].token_ids) >= 3:
                break  # the generator is closed, and the request aborted

    async def cancel_reader():
        async def read():
            async for _ in engine.generate({"prompt_token_ids": PROMPTS[2]}, LONG, "c"):
                pass

        task = asyncio.ensure_future(read())
        while not engine.engine.has_unfinished_requests():
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def run():
        await break_out()
        await _until_idle(engine)
        first = _blocks(engine)
        await cancel_reader()
        await _until_idle(engine)
        return first, _blocks(engine)

    for free, total in asyncio.run(run()):
        assert free == total
    assert not engine.engine.has_unfinished_requests()


def test_idle_engine_thread_sleeps(engine):
    async def run():
        async for _ in engine.generate({"prompt_token_ids": [5, 6]}, GREEDY, "warm"):
            pass

    asyncio.run(run())
    thread = next(t for t in threading.enumerate() if t.name == "vllm-engine")
    proc = psutil.Process()

    def cpu() -> float:
        times = next(t for t in proc.threads() if t.id == thread.native_id)
        return times.user_time + times.system_time

    before = cpu()
    time.sleep(1.0)
    assert cpu() - before < 0.02  # seconds of CPU over one idle second


def test_failing_engine_ends_every_stream(tiny_model, monkeypatch):
    engine = AsyncLLMEngine.from_engine_args(_args(tiny_model("llama_gqa")))
    calls = []

    def step():
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("worker lost")
        return real_step()

    real_step = engine.engine.step
    monkeypatch.setattr(engine.engine, "step", step)

    async def run():
        stream = await engine.add_request("x", {"prompt_token_ids": [1, 2, 3]}, LONG)
        with pytest.raises(EngineDeadError, match="worker lost"):
            async for _ in stream:
                pass
        assert engine.errored
        with pytest.raises(EngineDeadError):
            engine.check_health()
        with pytest.raises(EngineDeadError):
            await engine.add_request("y", {"prompt_token_ids": [1]}, GREEDY)

    try:
        asyncio.run(run())
    finally:
        engine.shutdown()


def test_shutdown_ends_open_streams(tiny_model):
    engine = AsyncLLMEngine.from_engine_args(_args(tiny_model("llama_gqa")))

    async def run():
        stream = await engine.add_request("s", {"prompt_token_ids": [4, 5]}, LONG)
        await stream.__anext__()
        engine.shutdown()  # from the event loop, as a server's exit path does
        with pytest.raises(EngineDeadError, match="shut down"):
            async for _ in stream:
                pass
        with pytest.raises(EngineDeadError):
            await engine.add_request("t", {"prompt_token_ids": [1]}, GREEDY)

    asyncio.run(run())
    assert not engine.errored
