"""Idle cost of a control plane, for benchmark_control_plane.py: the CPU an idle
engine and its workers use, and what the first step after the idle period costs
(for the SPMD compiled graph, which is torn down when idle, the rebuild)."""

import os
import sys
import time
from typing import Any

import psutil

IDLE_DELAY_S = 2.0  # from the last step to the start of the idle measurement


def _cpu_seconds(procs: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def _first_token_ms(engine: Any, request_id: str) -> float:
    """Wall time of one step that prefills a short prompt (max_tokens=1)."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    engine.add_request(request_id, {"prompt_token_ids": [5, 6, 7, 8]}, params)
    t0 = time.perf_counter()
    engine.step()
    wall = time.perf_counter() - t0
    while engine.has_unfinished_requests():
        engine.step()
    return 1e3 * wall


def measure_idle(llm: Any, name: str, seconds: float) -> dict:
    """Idle CPU of the engine and all its workers, then the price of waking up."""
    executor = llm.llm_engine.executor
    # Every rank's process; on uni, mp and ray rank 0 is the engine process.
    pids = sorted({os.getpid(), *executor.collective_rpc("get_pid")})
    procs = [psutil.Process(pid) for pid in pids]
    time.sleep(IDLE_DELAY_S)
    cpu0, t0 = _cpu_seconds(procs), time.perf_counter()
    time.sleep(seconds)
    share = 100 * (_cpu_seconds(procs) - cpu0) / (time.perf_counter() - t0)
    cold = _first_token_ms(llm.llm_engine, f"{name}-after-idle")
    warm = _first_token_ms(llm.llm_engine, f"{name}-warm")
    row = dict(
        path=name,
        idle_seconds=seconds,
        num_processes=len(procs),
        idle_cpu_percent=share,
        first_step_after_idle_ms=cold,
        warm_step_ms=warm,
    )
    stats = getattr(executor, "graph_stats", None)
    if stats is not None and stats.idle_teardowns:
        row.update(
            graph_rebuild_ms=1e3 * stats.compile_s,
            graph_teardown_ms=1e3 * stats.teardown_s,
        )
    print_idle_row(row, file=sys.stderr)
    return row


IDLE_COLUMNS = (
    ("path", "{:<11}", "path"),
    ("idle CPU %", "{:>11.1f}", "idle_cpu_percent"),
    ("procs", "{:>6}", "num_processes"),
    ("1st step ms", "{:>12.1f}", "first_step_after_idle_ms"),
    ("warm ms", "{:>9.1f}", "warm_step_ms"),
    ("rebuild ms", "{:>11.1f}", "graph_rebuild_ms"),
    ("teardown ms", "{:>12.1f}", "graph_teardown_ms"),
)


def print_idle_row(row: dict, file=sys.stdout) -> None:
    cells = []
    for _, fmt, key in IDLE_COLUMNS:
        value = row.get(key)
        if value is None:  # no compiled graph: nothing to rebuild
            cells.append("-".rjust(width(fmt)))
        else:
            cells.append(fmt.format(value))
    print(" ".join(cells), file=file)


def width(fmt: str) -> int:
    return int("".join(ch for ch in fmt.split(".")[0] if ch.isdigit()))


def header(columns: tuple) -> str:
    return " ".join(
        title.ljust(width(fmt)) if "<" in fmt else title.rjust(width(fmt))
        for title, fmt, _ in columns
    )


def print_idle_table(idle: list[dict]) -> None:
    print(
        f"\nidle: engine + worker processes, % of one core over the idle seconds, "
        f"from {IDLE_DELAY_S:.0f} s after the last step; then the first step after "
        "the idle period and a warm one"
    )
    print(header(IDLE_COLUMNS))
    for row in idle:
        print_idle_row(row)
