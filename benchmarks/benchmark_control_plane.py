"""Per-step cost of the control plane: moving a decode step's inputs from the
engine to the workers, for each executor path, on a model so small (1 layer,
hidden 64, random weights; ``--num-layers 0``: no layer at all) that the forward
pass is nearly free.

    python benchmarks/benchmark_control_plane.py --paths uni,mp,spmd_mp,spmd_ray \
        --batch-sizes 256 --context-lens 128 --num-steps 20 --num-layers 0

``--async-scheduling`` runs the engine with one step in flight
(``Executor.submit_model``) where the engine supports it. After a path's sizes,
its idle CPU (engine and rank processes, ``--idle-seconds``) is printed.

For every (path, batch, context): add ``batch`` prompts of ``context`` tokens,
step until each has its first token (prefill done), run one untimed decode step,
then time ``--num-steps`` decode steps. Bytes are counted over the warm-up and
timed steps.

After a path's last size, its idle cost: the CPU the engine process and every
worker process use together (% of one core) over ``--idle-seconds``, starting
2 s after the last step, then how long the first step after that idle period
takes next to a warm one. For spmd_graph, which tears its compiled graph down
when idle (VLLM_RAY_CGRAPH_IDLE_TEARDOWN_S), the rebuild (compile) and teardown
times are printed too.
"""

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

from benchmark_utils import random_prompts, sampleable_token_ids, write_json
from control_plane_idle import header, measure_idle, print_idle_table

from vllm.executor import CONTROL_PLANES, control_plane_env

# The paths are the project's control planes (vllm.executor.CONTROL_PLANES); every
# one but uni runs at --tensor-parallel-size (2).
PATHS = CONTROL_PLANES
LEGACY_CPU_NOTE = (
    "engine CPU of mp/ray includes the driver worker's (rank 0) model work, "
    "which runs in the engine process; uni likewise runs its only worker there"
)


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--paths", default=",".join(PATHS), help="comma-separated")
    p.add_argument("--batch-sizes", type=_int_list, default=[1, 4, 16, 64, 256])
    p.add_argument("--context-lens", type=_int_list, default=[128, 512, 1024, 4096])
    p.add_argument("--num-steps", type=int, default=20, help="timed decode steps")
    p.add_argument(
        "--max-total-tokens",
        type=int,
        default=0,
        help="skip sizes whose batch*context exceeds this (0: run all)",
    )
    p.add_argument("--max-num-batched-tokens", type=int, default=16384)
    p.add_argument(
        "--threads-per-worker",
        type=int,
        default=1,
        help="torch threads per rank (VLLM_CPU_NUM_THREADS; 0: engine default). "
        "1 keeps uni comparable: a 2-thread tiny matmul mostly waits on its peer",
    )
    p.add_argument(
        "--idle-seconds",
        type=float,
        default=5.0,
        help="seconds over which idle CPU is measured, after a 2 s pause "
        "(0: skip the idle measurement)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-layers", type=int, default=1, help="decoder layers (0: none)")
    p.add_argument(
        "--async-scheduling",
        action="store_true",
        help="engine --async-scheduling: one step in flight",
    )
    p.add_argument(
        "--tensor-parallel-size",
        "-tp",
        type=int,
        default=2,
        help="TP size of every path but uni (1: an SPMD path's cost over uni is "
        "its transport alone)",
    )
    p.add_argument(
        "--pipeline-parallel-size",
        "-pp",
        type=int,
        default=1,
        help="pipeline stages of the SPMD paths (needs --num-layers >= it)",
    )
    p.add_argument(
        "--config-overrides",
        type=json.loads,
        default={},
        help="JSON of transformers LlamaConfig fields over the tiny shape, e.g. "
        '\'{"num_attention_heads": 64, "num_key_value_heads": 8}\' (docs/scaling.md)',
    )
    p.add_argument("--output-json", default="benchmarks/results/control_plane.json")
    args = p.parse_args(argv)
    args.paths = [s.strip() for s in args.paths.split(",") if s.strip()]
    unknown = [s for s in args.paths if s not in PATHS]
    if unknown:
        p.error(f"unknown path(s) {unknown}; choose from {list(PATHS)}")
    if args.num_steps < 1 or min(args.batch_sizes + args.context_lens) < 1:
        p.error("--num-steps, batch sizes and context lengths must be >= 1")
    if args.num_layers < 0:
        p.error("--num-layers must be >= 0")
    if not 1 <= args.pipeline_parallel_size <= max(1, args.num_layers):
        p.error("--pipeline-parallel-size must be >= 1 and <= --num-layers")
    if not args.idle_seconds >= 0:
        p.error("--idle-seconds must be >= 0")
    return args


def write_tiny_model(
    folder: str, max_len: int, num_layers: int, overrides: dict[str, Any]
) -> str:
    """A config-only tiny Llama (weights come from load_format="dummy")."""
    from vllm.transformers_utils.tiny_model import tiny_config, write_model_folder

    config = tiny_config(
        num_hidden_layers=num_layers,
        max_position_embeddings=max(8192, max_len),
        **overrides,
    )
    return write_model_folder(folder, config)


def grid(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(batch, context) pairs to run, skipping those over --max-total-tokens."""
    limit = args.max_total_tokens
    return [
        (b, c)
        for c in args.context_lens
        for b in args.batch_sizes
        if not limit or b * c <= limit
    ]


def request_len(batch: int, context: int, budget: int, num_steps: int) -> int:
    """Tokens a request may reach: the first-admitted request decodes while the
    rest of the batch prefills, then through the warm-up and timed steps."""
    prefill_steps = math.ceil(batch * context / (budget - batch)) + 1
    return context + prefill_steps + num_steps + 16


def engine_kwargs(args: argparse.Namespace, sizes: list[tuple[int, int]]) -> dict:
    """LLM keywords with a KV cache just big enough for the largest size (as a
    block count: with no layer a block has no bytes); no request may stop
    (max_tokens, max_model_len) before its size is measured."""
    block = 16
    budget = max(args.max_num_batched_tokens, 2 * max(b for b, _ in sizes))
    lens = {(b, c): request_len(b, c, budget, args.num_steps) for b, c in sizes}
    max_len = max(lens.values())
    blocks = max(b * math.ceil(n / block) for (b, _), n in lens.items())
    blocks = max(blocks, math.ceil(max_len / block)) * 1.1 + 64  # + watermark
    return dict(
        load_format="dummy",
        dtype="float32",
        block_size=block,
        max_model_len=max_len,
        max_num_seqs=max(256, max(b for b, _ in sizes)),
        max_num_batched_tokens=max(budget, max_len),
        num_gpu_blocks_override=int(blocks),
        async_scheduling=args.async_scheduling,
    )


@contextlib.contextmanager
def path_env(name: str) -> Iterator[None]:
    """The path's environment while its LLM is created and used; restored after."""
    with mock.patch.dict(os.environ):
        for key, value in control_plane_env(name).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield


def finish_prefill(engine: Any, ids: list[str]) -> int:
    """Steps until every request has its first token; returns the step count."""
    waiting, steps = set(ids), 0
    while waiting:
        for out in engine.step():
            if out.outputs and out.outputs[0].token_ids:
                waiting.discard(out.request_id)
        steps += 1
        if not engine.has_unfinished_requests() and waiting:
            raise RuntimeError(f"requests finished before their first token: {waiting}")
    return steps


def time_decode(engine: Any, num_steps: int, batch: int) -> tuple[list, float]:
    """Wall seconds of each step, and the engine process's CPU seconds in total.
    Raises if a step did not decode the whole batch (a request stopped or was
    preempted): its time would not be a decode step of this size."""
    walls, decoded = [], []
    cpu0 = time.process_time()
    for _ in range(num_steps):
        t0 = time.perf_counter()
        outputs = engine.step()
        walls.append(time.perf_counter() - t0)
        decoded.append(len(outputs))
    cpu = time.process_time() - cpu0
    if any(n != batch for n in decoded):
        raise RuntimeError(f"decode steps covered {decoded} sequences, not {batch}")
    return walls, cpu


def measure(llm: Any, name: str, batch: int, context: int, ctx: dict) -> dict:
    from vllm import SamplingParams

    args, engine = ctx["args"], llm.llm_engine
    # max_tokens=None: run until max_model_len, which engine_kwargs sized.
    params = SamplingParams(temperature=0.0, max_tokens=None, ignore_eos=True)
    prompts = random_prompts(ctx["allowed_ids"], batch, context, args.seed)
    ids = [f"{name}-{batch}-{context}-{i}" for i in range(batch)]
    t0 = time.perf_counter()
    for rid, prompt in zip(ids, prompts):
        engine.add_request(rid, {"prompt_token_ids": prompt}, params)
    prefill_steps = finish_prefill(engine, ids)
    prefill_s = time.perf_counter() - t0
    executor = engine.executor
    sent0, back0 = executor.bytes_sent, executor.bytes_received
    engine.step()  # warm-up
    walls, cpu = time_decode(engine, args.num_steps, batch)
    sent1, back1 = executor.bytes_sent, executor.bytes_received
    engine.abort_request(ids)
    counted = args.num_steps + 1
    return dict(
        path=name,
        batch=batch,
        context=context,
        ms_per_step=1e3 * sum(walls) / len(walls),
        p50_ms_per_step=1e3 * statistics.median(walls),
        bytes_sent_per_step=(sent1 - sent0) / counted,
        bytes_back_per_step=(back1 - back0) / counted,
        engine_cpu_ms_per_step=1e3 * cpu / args.num_steps,
        prefill_steps=prefill_steps,
        prefill_s=prefill_s,
    )


def run_path(name: str, ctx: dict) -> tuple[list[dict], dict | None]:
    from vllm import LLM

    plane, args = PATHS[name], ctx["args"]
    one_process = plane.backend == "uni"
    pp = args.pipeline_parallel_size if plane.spmd else 1
    if plane.backend == "ray":
        ensure_ray(args.tensor_parallel_size * pp)
    rows, idle = [], None
    with path_env(name):
        llm = LLM(
            ctx["model"],
            tensor_parallel_size=1 if one_process else args.tensor_parallel_size,
            pipeline_parallel_size=pp,
            distributed_executor_backend=plane.backend,
            **ctx["engine_kwargs"],
        )
        try:
            for batch, context in ctx["sizes"]:
                row = measure(llm, name, batch, context, ctx)
                print_row(row, file=sys.stderr)
                rows.append(row)
            if ctx["args"].idle_seconds:
                idle = measure_idle(llm, name, ctx["args"].idle_seconds)
        finally:
            llm.shutdown()
    return rows, idle


def ensure_ray(world_size: int) -> None:
    """One local Ray for every Ray path; executors join it and leave it up. Each
    rank's actor reserves one (logical) CPU, so TP=8 needs 8 even on 2 cores."""
    import ray

    if not ray.is_initialized():
        cpus = max(4, world_size)
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING")


COLUMNS = (
    ("path", "{:<11}", "path"),
    ("batch", "{:>6}", "batch"),
    ("context", "{:>8}", "context"),
    ("ms/step", "{:>9.3f}", "ms_per_step"),
    ("p50 ms", "{:>9.3f}", "p50_ms_per_step"),
    ("sent B/step", "{:>12.1f}", "bytes_sent_per_step"),
    ("back B/step", "{:>12.1f}", "bytes_back_per_step"),
    ("CPU ms/step", "{:>12.3f}", "engine_cpu_ms_per_step"),
)


def print_row(row: dict, file=sys.stdout) -> None:
    print(" ".join(fmt.format(row[key]) for _, fmt, key in COLUMNS), file=file)


def print_table(rows: list[dict]) -> None:
    print(header(COLUMNS))
    for row in rows:
        print_row(row)
    print(f"note: {LEGACY_CPU_NOTE}")
    print("note: SPMD bytes are counted once per step; every rank gets the same frame")


def run_all(
    args: argparse.Namespace, sizes: list, kwargs: dict
) -> tuple[list[dict], list[dict]]:
    # Set before Ray starts, so its actors inherit the thread count too.
    threads = {"VLLM_CPU_NUM_THREADS": str(args.threads_per_worker)}
    with (
        tempfile.TemporaryDirectory(prefix="cp-bench-model-") as folder,
        mock.patch.dict(os.environ, threads if args.threads_per_worker else {}),
    ):
        from vllm.transformers_utils.model_resolver import load_tokenizer

        model = write_tiny_model(
            folder, kwargs["max_model_len"], args.num_layers, args.config_overrides
        )
        allowed = sampleable_token_ids(load_tokenizer(model), 1024)
        ctx = dict(
            args=args,
            model=model,
            sizes=sizes,
            engine_kwargs=kwargs,
            allowed_ids=allowed,
        )
        rows, idle = [], []
        try:
            for name in args.paths:
                path_rows, path_idle = run_path(name, ctx)
                rows.extend(path_rows)
                idle.extend([path_idle] if path_idle else [])
        finally:
            ray = sys.modules.get("ray")
            if ray is not None and ray.is_initialized():
                ray.shutdown()
        return rows, idle


def main(args: argparse.Namespace) -> None:
    from vllm import envs

    sizes = grid(args)
    if not sizes:
        raise SystemExit("no (batch, context) size left after --max-total-tokens")
    kwargs = engine_kwargs(args, sizes)
    rows, idle = run_all(args, sizes, kwargs)
    print_table(rows)
    if idle:
        print_idle_table(idle)
    if args.output_json:
        settings = (
            "VLLM_SPMD_STEP_NOTIFIER",
            "VLLM_SPMD_WORKER_NICENESS",
            "VLLM_MQ_MAX_CHUNK_BYTES_MB",
            "VLLM_MQ_SPIN_US",
            "VLLM_RAY_CGRAPH_IDLE_TEARDOWN_S",
        )
        write_json(
            args.output_json,
            {
                "args": vars(args),
                "engine_kwargs": kwargs,
                "env": {name: getattr(envs, name, None) for name in settings},
                "notes": [LEGACY_CPU_NOTE],
                "results": rows,
                "idle": idle,
            },
        )


if __name__ == "__main__":
    main(parse_args())
