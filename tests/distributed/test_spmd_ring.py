"""SPMD over our shared-memory rings (spmd_mp: spawned ranks, spmd_ray: Ray actors)
and over the Ray Compiled Graph (spmd_graph) agrees token for token with one worker
in the engine (uni) at TP=1 and TP=2, with and without async scheduling; keeps a
step in flight; reaches every rank with control calls; and sleeps when idle."""

import os
import time

import psutil
import pytest

from tests.conftest import use_control_plane
from tests.distributed.workloads import generate_tp_requests as generate
from vllm import LLM, SamplingParams
from vllm.messages import (
    ExecuteModelRequest,
    NewRequest,
    RunningRequest,
    SamplingOptions,
)

PLANES = ["spmd_mp", "spmd_ray"]


@pytest.fixture(scope="module", autouse=True)
def shared_ray():
    """One Ray for the module: the backends join it instead of starting their own."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def make_llm(monkeypatch, plane: str, model: str, tp: int, **kwargs) -> LLM:
    backend = use_control_plane(monkeypatch, plane).backend
    return LLM(
        model,
        tensor_parallel_size=tp,
        distributed_executor_backend=backend,
        max_model_len=224,
        **kwargs,
    )


@pytest.fixture(scope="module")
def reference(tiny_model):
    llm = LLM(
        tiny_model("llama_tp4"),
        distributed_executor_backend="uni",
        max_model_len=224,
        num_gpu_blocks_override=14,
    )
    out = generate(llm)
    llm.shutdown()
    assert out["preempted"]
    return out


# Every SPMD transport x async scheduling x TP 1/2; TP=2 without async scheduling
# runs in test_spmd.py with every other plane.
SPMD_PLANES = PLANES + ["spmd_graph"]


@pytest.mark.parametrize(
    "plane, tp, async_scheduling",
    [(p, 1, a) for p in SPMD_PLANES for a in (False, True)]
    + [(p, 2, True) for p in SPMD_PLANES],
)
def test_tokens_equal_uni(
    monkeypatch, tiny_model, reference, plane, tp, async_scheduling
):
    llm = make_llm(
        monkeypatch,
        plane,
        tiny_model("llama_tp4"),
        tp,
        num_gpu_blocks_override=14,
        async_scheduling=bool(async_scheduling),
    )
    got = generate(llm)
    pids = llm.llm_engine.executor.collective_rpc("get_pid")
    llm.shutdown()
    assert got == reference
    assert len(set(pids)) == tp and os.getpid() not in pids


def _new(req_id: str, prompt: list[int], blocks: list[int]) -> NewRequest:
    return NewRequest(
        req_id, prompt, len(prompt), blocks, 0, len(prompt), SamplingOptions(seed=1)
    )


def _steps() -> list[ExecuteModelRequest]:
    """A prefill, then decode steps the workers can run without the engine
    having read any output (workers keep the tokens they sample)."""
    first = ExecuteModelRequest(
        [_new("a", [5, 6, 7], [0]), _new("b", [9, 8], [1])], [], []
    )
    decode = ExecuteModelRequest(
        [], [RunningRequest("a", [], 1), RunningRequest("b", [], 1)], []
    )
    return [first, decode, decode, decode]


def reversed_payload(worker, data: bytes) -> tuple[int, bytes]:
    """Run on each rank by collective_rpc: a big argument and a big result."""
    return worker.rank, data[::-1]


@pytest.mark.parametrize("plane", ["spmd_mp", "spmd_graph"])
def test_steps_in_flight_and_control_calls(monkeypatch, tiny_model, plane):
    model = tiny_model("llama_tp4")
    uni = make_llm(monkeypatch, "uni", model, 1, num_gpu_blocks_override=14)
    expected = [uni.llm_engine.executor.execute_model(s) for s in _steps()]
    uni.shutdown()
    # 10 KB slots: the 1 MB call below and its replies take the socket fallback.
    monkeypatch.setenv("VLLM_MQ_MAX_CHUNK_BYTES_MB", "0.01")
    llm = make_llm(monkeypatch, plane, model, 2, num_gpu_blocks_override=14)
    executor = llm.llm_engine.executor
    steps = _steps()
    pending = [executor.submit_model(steps[0]), executor.submit_model(steps[1])]
    # A control call while two steps are in flight: their outputs are kept.
    assert executor.collective_rpc("determine_num_available_blocks") == [14, 14]
    pending += [executor.submit_model(s) for s in steps[2:]]
    assert [wait() for wait in pending] == expected
    if plane == "spmd_mp":  # the rings' socket fallback; Ray actors cannot
        # import a function of this test module by reference.
        payload = os.urandom(1 << 20)
        got = executor.collective_rpc(reversed_payload, (payload,))
        assert got == [(0, payload[::-1]), (1, payload[::-1])]
    # The rings re-raise a rank's error as RuntimeError; Ray as its RayTaskError,
    # which is also the worker's ValueError.
    with pytest.raises((RuntimeError, ValueError), match="LoRA is off"):
        executor.collective_rpc("list_loras")
    # Every rank answered (and failed) that call; the next one finds no leftovers.
    assert len(executor.collective_rpc("get_pid")) == 2
    llm.shutdown()


def _cpu_seconds(pids: list[int]) -> float:
    return sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids)


@pytest.mark.parametrize("plane", PLANES)
def test_idle_engine_sleeps(monkeypatch, tiny_model, plane):
    llm = make_llm(monkeypatch, plane, tiny_model("llama_tp4"), 2, kv_cache_space=0.02)
    llm.generate({"prompt_token_ids": [5, 6, 7]}, SamplingParams(max_tokens=4), False)
    pids = [os.getpid(), *llm.llm_engine.executor.collective_rpc("get_pid")]
    time.sleep(0.5)  # let the ranks pass their spin window
    before, start = _cpu_seconds(pids), time.monotonic()
    time.sleep(3.0)
    busy = (_cpu_seconds(pids) - before) / (time.monotonic() - start)
    llm.shutdown()
    print(f"{plane}: idle CPU {busy:.1%} of a core over the engine and ranks")
    assert busy < 0.20
