"""Pipeline parallelism: each stage builds and loads only its layers; PP=2 and
TP=2 x PP=2 give the tokens of one worker in the engine (uni), with and without
async scheduling (with it the stages overlap), on every SPMD plane; the legacy
planes refuse PP at start."""

import argparse
import os

import pytest
import torch

from tests.conftest import use_control_plane
from tests.distributed.workloads import generate_tp_requests as generate
from vllm import LLM, EngineArgs, envs
from vllm.config import ParallelConfig
from vllm.distributed.parallel_state import (
    PipelineGroup,
    TensorParallelGroup,
    stage_layers,
)
from vllm.model_executor.model_loader.loader import get_model

MODEL = "llama_pp"  # 5 layers: an uneven split at PP=2 (3 + 2) and PP=3 (2 + 2 + 1)

# (plane, TP, PP, async scheduling, prefix caching)
CASES = [
    ("spmd_mp", 1, 2, False, False),
    ("spmd_mp", 1, 3, True, False),
    ("spmd_mp", 2, 2, True, True),
    ("spmd_ray", 1, 2, True, False),
    ("spmd_graph", 2, 2, False, False),
    ("spmd_graph", 1, 2, True, False),
]


ENGINE = dict(max_model_len=224, num_gpu_blocks_override=14)


@pytest.fixture(scope="module")
def reference(tiny_model):
    llm = LLM(tiny_model(MODEL), distributed_executor_backend="uni", **ENGINE)
    out = generate(llm)
    llm.shutdown()
    assert out["preempted"]
    return out


def stage_of(worker) -> tuple[int, int, int, list[int], list[str], int]:
    """Run on every rank: (rank, TP rank, stage, layers, top-level parts built,
    torch threads)."""
    model = worker.model_runner.model
    parts = [n for n in ("embed_tokens", "norm") if getattr(model.model, n)]
    parts += ["lm_head"] if model.lm_head is not None else []
    layers = list(worker.model_runner.layers)
    threads = torch.get_num_threads()
    return worker.rank, worker.tp.rank, worker.pp.stage, layers, parts, threads


@pytest.mark.parametrize(
    "plane, tp, pp, async_scheduling, prefix_caching",
    CASES,
    ids=[
        f"{p}-tp{t}-pp{s}" + ("-async" if a else "") + ("-prefix" if c else "")
        for p, t, s, a, c in CASES
    ],
)
def test_tokens_equal_uni(
    request,
    monkeypatch,
    tiny_model,
    reference,
    plane,
    tp,
    pp,
    async_scheduling,
    prefix_caching,
):
    if plane != "spmd_mp":
        request.getfixturevalue("shared_ray")
    backend = use_control_plane(monkeypatch, plane).backend
    llm = LLM(
        tiny_model(MODEL),
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        distributed_executor_backend=backend,
        async_scheduling=async_scheduling,
        enable_prefix_caching=prefix_caching,
        **ENGINE,
    )
    executor = llm.llm_engine.executor
    try:
        got = generate(llm)
        pids = executor.collective_rpc("get_pid")
        ahead = executor.collective_rpc("steps_ahead")
        # Ray actors cannot import this test module: inspect spawned ranks only.
        ranks = executor.collective_rpc(stage_of) if plane == "spmd_mp" else None
    finally:
        llm.shutdown()
    assert got == reference
    assert len(set(pids)) == tp * pp  # a control call reaches every rank
    # With async scheduling the stages overlap: every rank before the output
    # rank went on to later steps before it had an earlier step's tokens.
    # Without, they take turns.
    output_rank = (pp - 1) * tp
    assert all((n > 0) == async_scheduling for n in ahead[:output_rank]), ahead
    assert ahead[output_rank] == 0
    if ranks is None:
        return
    # Stage-major ranks, uneven split.
    want_layers = [list(stage_layers(5, pp, s)) for s in range(pp)]
    assert [r[:3] for r in ranks] == [(r, r % tp, r // tp) for r in range(tp * pp)]
    assert [r[3] for r in ranks] == [want_layers[r // tp] for r in range(tp * pp)]
    for rank, _, stage, _, parts, _ in ranks:
        first, last = stage == 0, stage == pp - 1
        want = ["embed_tokens"] * first + ["norm", "lm_head"] * last
        assert parts == want, rank
    # Overlapping stages compute at once: each rank gets its share of the
    # machine. Stages that take turns share one stage's share.
    busy = tp * (pp if async_scheduling else 1)
    threads = envs.VLLM_CPU_NUM_THREADS or max(1, (os.cpu_count() or 1) // busy)
    assert [r[5] for r in ranks] == [threads] * (tp * pp)


def test_stage_layers_cover_the_model_once():
    assert [list(stage_layers(5, 2, s)) for s in range(2)] == [[0, 1, 2], [3, 4]]
    assert [len(stage_layers(5, 3, s)) for s in range(3)] == [2, 2, 1]
    for layers, stages in ((4, 4), (30, 4), (7, 1)):
        joined = [i for s in range(stages) for i in stage_layers(layers, stages, s)]
        assert joined == list(range(layers))


def _config(tiny_model, variant: str):
    return EngineArgs(
        model=tiny_model(variant), max_model_len=64
    ).create_engine_config()


@pytest.mark.parametrize("variant", [MODEL, "llama_mha_tied"])
def test_each_stage_loads_only_its_weights(tiny_model, variant):
    """Stage models hold exactly the full model's parameters between them, with
    the same values, and none of another stage's; a tied LM head on a last stage
    without the embedding is loaded from the embedding's tensor."""
    mc = _config(tiny_model, variant).model_config
    full = dict(get_model(mc, TensorParallelGroup()).named_parameters())
    stages = [PipelineGroup(rank=s, size=2).layers(mc.num_layers) for s in range(2)]
    seen: dict[str, torch.Tensor] = {}
    for layers in stages:
        part = dict(get_model(mc, TensorParallelGroup(), layers).named_parameters())
        held = {int(n.split(".")[2]) for n in part if n.startswith("model.layers.")}
        assert held == set(layers)
        assert not seen.keys() & part.keys() - {"lm_head.weight"}
        seen.update(part)
    if "lm_head.weight" not in full:  # tied: the full model names it once
        full["lm_head.weight"] = full["model.embed_tokens.weight"]
    assert seen.keys() == full.keys()
    for name, value in full.items():
        assert torch.equal(seen[name], value), name


@pytest.mark.parametrize("plane", ["uni", "mp", "ray"])
def test_legacy_planes_refuse_pp_with_what_to_use(monkeypatch, tiny_model, plane):
    backend = use_control_plane(monkeypatch, plane).backend
    args = EngineArgs(
        model=tiny_model(MODEL),
        pipeline_parallel_size=2,
        distributed_executor_backend=backend,
    )
    with pytest.raises(ValueError, match="VLLM_USE_SPMD_WORKER=1") as err:
        args.create_engine_config()
    assert "pipeline_parallel_size 2" in str(err.value)


def test_pp_without_backend_defaults_to_a_refusal(monkeypatch, tiny_model):
    use_control_plane(monkeypatch, "uni")
    args = EngineArgs(model=tiny_model(MODEL), pipeline_parallel_size=2)
    with pytest.raises(ValueError, match="--distributed-executor-backend mp"):
        args.create_engine_config()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(pipeline_parallel_size=6), "exceeds the model's 5 layers"),
        (dict(pipeline_parallel_size=2, enable_lora=True), "LoRA"),
        (dict(pipeline_parallel_size=0), "pipeline_parallel_size must be >= 1"),
    ],
)
def test_unsupported_combinations_fail_at_start(
    monkeypatch, tiny_model, kwargs, message
):
    use_control_plane(monkeypatch, "spmd_mp")
    args = EngineArgs(
        model=tiny_model(MODEL), distributed_executor_backend="mp", **kwargs
    )
    with pytest.raises(ValueError, match=message):
        args.create_engine_config()


def test_cli_flag_and_rank_layout():
    parser = EngineArgs.add_cli_args(argparse.ArgumentParser())
    args = EngineArgs.from_cli_args(parser.parse_args(["-pp", "3", "-tp", "2"]))
    assert (args.pipeline_parallel_size, args.tensor_parallel_size) == (3, 2)
    long = parser.parse_args(["--pipeline-parallel-size", "2"])
    assert long.pipeline_parallel_size == 2
    pc = ParallelConfig(
        tensor_parallel_size=2,
        pipeline_parallel_size=3,
        distributed_executor_backend="mp",
        use_spmd_worker=True,
    )
    # Stage-major: the last stage is ranks 4 and 5; its first rank answers.
    assert (pc.world_size, pc.output_rank) == (6, 4)
    assert PipelineGroup(rank=5, size=3, tp_size=2).stage == 2
