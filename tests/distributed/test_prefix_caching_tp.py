"""Prefix caching at TP=2 on both control planes (legacy driver over mp, SPMD over
a Ray compiled graph): a workload of shared prefixes under KV pressure, with n > 1
and an abort, gives TP=1's tokens without caching. Workers only see block ids and
the start position of a new request, so every rank must agree on them."""

import pytest
import torch

from tests.conftest import use_control_plane
from vllm import LLM, SamplingParams

# Runs as (control plane, prefix caching); uni runs at TP=1, the others at TP=2.
RUNS = [("uni", False), ("mp", True), ("spmd_graph", True)]


@pytest.fixture(scope="module", autouse=True)
def shared_ray():
    """One Ray for the module: the ray backend joins it instead of starting one."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def _tokens(n: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, 1000, (n,), generator=gen).tolist()


def _workload(llm: LLM) -> dict:
    prefix = _tokens(37, 1)
    prompts = [
        {"prompt_token_ids": prefix + _tokens(n, 10 + n)} for n in (0, 5, 16, 27)
    ]
    greedy = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    seeded = [
        SamplingParams(n=2, temperature=0.9, seed=i, max_tokens=40, ignore_eos=True)
        for i in range(len(prompts))
    ]
    out = {
        "greedy": [
            o.outputs[0].token_ids for o in llm.generate(prompts, greedy, False)
        ],
        "seeded": [
            [c.token_ids for c in o.outputs]
            for o in llm.generate(prompts, seeded, False)
        ],
    }
    engine = llm.llm_engine
    for i, p in enumerate(prompts[:3]):
        engine.add_request(f"abort-{i}", p, seeded[i])
    for _ in range(4):
        engine.step()
    engine.abort_request("abort-1")
    finished = {}
    while engine.has_unfinished_requests():
        for o in engine.step():
            if o.finished:
                finished[o.request_id] = [c.token_ids for c in o.outputs]
    out["abort"] = [finished["abort-0"], finished["abort-2"]]
    return out


def test_tp2_with_caching_equals_tp1_without(monkeypatch, tiny_model):
    model = tiny_model("llama_gqa")
    results, stats = {}, {}
    for name, caching in RUNS:
        backend = use_control_plane(monkeypatch, name).backend
        # 14 blocks of 16 tokens cannot hold the 8 sequences of up to 104
        # tokens of one batch, even with the prefix shared: preemption.
        llm = LLM(
            model,
            tensor_parallel_size=1 if backend == "uni" else 2,
            distributed_executor_backend=backend,
            enable_prefix_caching=caching,
            num_gpu_blocks_override=14,
            max_model_len=224,
        )
        try:
            results[name] = _workload(llm)
            scheduler = llm.llm_engine.scheduler
            stats[name] = (scheduler.prefix_cache_stats.hits, scheduler.num_preemptions)
        finally:
            llm.shutdown()
    assert stats["uni"][0] == 0
    for name in ("mp", "spmd_graph"):
        hits, preemptions = stats[name]
        assert hits > 0 and preemptions > 0, name
        assert results[name] == results["uni"], name
