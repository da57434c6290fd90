"""SPMD workers over Ray (compiled graph and plain calls) agree token for token with
every other control plane, send bounded deltas, and fail loudly when a rank dies."""

import os

import pytest
import torch

from tests.conftest import use_control_plane
from tests.distributed.workloads import tp_requests
from vllm import LLM, SamplingParams
from vllm.executor import CONTROL_PLANES

PATHS = list(CONTROL_PLANES)


@pytest.fixture(scope="module", autouse=True)
def shared_ray():
    """One Ray for the module: the backends join it instead of starting their own."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def make_llm(monkeypatch, path_name: str, model: str, tp: int = 2, **kwargs) -> LLM:
    """An LLM on control plane ``path_name``; uni always runs at TP=1."""
    backend = use_control_plane(monkeypatch, path_name).backend
    return LLM(
        model,
        tensor_parallel_size=1 if backend == "uni" else tp,
        distributed_executor_backend=backend,
        **kwargs,
    )


def workload(llm: LLM) -> dict[str, list[list[int]]]:
    """Greedy and seeded batches under KV pressure, plus an abort mid-generation."""
    prompts, greedy, seeded = tp_requests()
    out = {
        "greedy": [
            o.outputs[0].token_ids for o in llm.generate(prompts, greedy, False)
        ],
        "seeded": [
            o.outputs[0].token_ids for o in llm.generate(prompts, seeded, False)
        ],
    }
    engine = llm.llm_engine
    for i, p in enumerate(prompts[:3]):
        engine.add_request(f"abort-{i}", p, seeded[i])
    for _ in range(5):
        engine.step()
    engine.abort_request("abort-1")
    finished = {}
    while engine.has_unfinished_requests():
        for o in engine.step():
            if o.finished:
                finished[o.request_id] = o.outputs[0].token_ids
    out["abort"] = [finished["abort-0"], finished["abort-2"]]
    out["preemptions"] = engine.scheduler.num_preemptions
    return out


def test_tiny_tp2_all_paths_agree(monkeypatch, tiny_model):
    model = tiny_model("llama_tp4")
    results = {}
    for name in PATHS:
        # 14 blocks of 16 tokens cannot hold six sequences of up to 100 tokens.
        llm = make_llm(
            monkeypatch, name, model, num_gpu_blocks_override=14, max_model_len=224
        )
        results[name] = workload(llm)
        llm.shutdown()
    assert results["uni"]["preemptions"] > 0
    for name in PATHS:
        assert results[name] == results["uni"], name


def test_smollm2_tp3_paths_agree(monkeypatch, smollm2_path):
    prompts = ["The capital of France is", "def add(a, b):", "Roses are red,"]
    params = [
        SamplingParams(temperature=0.0, max_tokens=16),
        SamplingParams(temperature=0.8, seed=11, max_tokens=16),
        SamplingParams(temperature=1.0, top_k=20, seed=5, max_tokens=16),
    ]
    tokens = {}
    for name in PATHS:
        llm = make_llm(
            monkeypatch,
            name,
            smollm2_path,
            tp=3,
            kv_cache_space=0.05,
            max_model_len=128,
        )
        tokens[name] = [
            o.outputs[0].token_ids for o in llm.generate(prompts, params, False)
        ]
        llm.shutdown()
    for name, got in tokens.items():
        assert got == tokens["uni"], name


def test_engine_process_holds_no_model(monkeypatch, tiny_model):
    import gc

    import torch.distributed as dist

    llm = make_llm(
        monkeypatch, "spmd_graph", tiny_model("llama_tp4"), kv_cache_space=0.01
    )
    llm.generate({"prompt_token_ids": [5, 6]}, SamplingParams(max_tokens=2), False)
    assert not dist.is_initialized()
    live = gc.get_objects()
    ours = [
        o
        for o in live
        if isinstance(o, torch.nn.Module) and type(o).__module__.startswith("vllm.")
    ]
    assert ours == []  # no model here
    big = [o for o in live if isinstance(o, torch.Tensor) and o.numel() > 100_000]
    assert big == []  # no KV cache (10 MB here) and no weights
    assert not hasattr(llm.llm_engine.executor, "_group") or not hasattr(
        llm.llm_engine.executor._group, "driver"
    )
    # Control calls reach every rank through the graph.
    pids = llm.llm_engine.executor.collective_rpc("get_pid")
    assert len(set(pids)) == 2 and os.getpid() not in pids
    llm.shutdown()


def _decode_bytes_per_seq(llm: LLM, prompt_len: int, num_seqs: int = 4) -> float:
    engine = llm.llm_engine
    executor = engine.executor
    for i in range(num_seqs):
        prompt = {
            "prompt_token_ids": [(7 * i + j) % 900 + 3 for j in range(prompt_len)]
        }
        # Ids of equal length, so only the context length differs.
        engine.add_request(
            f"{prompt_len:05d}-{i}", prompt, SamplingParams(max_tokens=30)
        )
    while any(not r.output_token_ids for r in engine.scheduler.requests.values()):
        engine.step()
    engine.step()  # the first decode step may still carry a new block id
    before, steps = executor.bytes_sent, 10
    for _ in range(steps):
        engine.step()
    per_seq = (executor.bytes_sent - before) / steps / num_seqs
    engine.abort_request([f"{prompt_len:05d}-{i}" for i in range(num_seqs)])
    return per_seq


def test_decode_wire_size_is_independent_of_context(monkeypatch, tiny_model):
    llm = make_llm(
        monkeypatch,
        "spmd_graph",
        tiny_model("llama_tp4"),
        kv_cache_space=0.05,
        max_model_len=1100,
        max_num_batched_tokens=2048,
    )
    short = _decode_bytes_per_seq(llm, 100)
    long = _decode_bytes_per_seq(llm, 1000)
    llm.shutdown()
    print(f"decode bytes per sequence per step: ctx100={short:.1f} ctx1000={long:.1f}")
    assert short < 64
    assert abs(long - short) <= 0.1 * short
