"""Start/stop cycles of every SPMD plane leave no process, no /dev/shm entry, no
temp socket file and no traceback behind, whether the LLM is shut down, collected
or left to interpreter exit, and for the compiled graph also after it was torn
down for being idle. Each case runs in a subprocess that starts (and so
must stop) its own Ray when it uses one."""

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import psutil
import pytest

SCRIPT = textwrap.dedent(
    """
    import gc, json, sys, time
    import psutil
    from vllm import LLM, SamplingParams

    ranks = []  # [pid, start time] of every rank started

    def cycle(model, backend, how, idle_s=0.0):
        llm = LLM(model, tensor_parallel_size=2, distributed_executor_backend=backend,
                  kv_cache_space=0.01, max_model_len=128)
        out = llm.generate({"prompt_token_ids": [5, 6, 7]},
                           SamplingParams(max_tokens=4), use_tqdm=False)
        assert len(out[0].outputs[0].token_ids) == 4
        for pid in llm.llm_engine.executor.collective_rpc("get_pid"):
            ranks.append([pid, psutil.Process(pid).create_time()])
        time.sleep(idle_s)  # past VLLM_RAY_CGRAPH_IDLE_TEARDOWN_S: graph down
        stats = getattr(llm.llm_engine.executor, "graph_stats", None)
        if stats is not None:
            assert (stats.idle_teardowns > 0) == (idle_s > 0)
        if how == "shutdown":
            llm.shutdown()
        elif how == "gc":
            del llm
            gc.collect()
        return llm if how == "exit" else None

    if __name__ == "__main__":
        model, backend, cycles = sys.argv[1], sys.argv[2], int(sys.argv[3])
        idle_s = float(sys.argv[4])
        cycle(model, backend, "shutdown")
        for _ in range(cycles - 3):
            cycle(model, backend, "shutdown", idle_s)
        cycle(model, backend, "gc", idle_s)
        keep = cycle(model, backend, "exit", idle_s)  # left for interpreter exit
        print("RANKS", json.dumps(ranks), flush=True)
    """
)


def _ray_processes(since: float = 0.0, until: float = float("inf")) -> set[int]:
    """Ray's processes (raylet, GCS, workers) created in [since, until]."""
    found = set()
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        born = proc.info["create_time"] or 0.0
        if since <= born <= until and any(
            mark in cmd for mark in ("ray::", "raylet", "gcs_server")
        ):
            found.add(proc.info["pid"])
    return found


def _rings(folder: str) -> set[str]:
    """What our rings could leave in a folder: a segment or a socket file."""
    return {n for n in os.listdir(folder) if n.startswith("vllm-mq")}


def _still_running(procs: list[list]) -> list[int]:
    """Those of [pid, start time] alive after a grace period for exiting ones."""
    found = []
    for pid, started in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            if proc.create_time() == started:
                found.append(proc)
    _, alive = psutil.wait_procs(found, timeout=10)
    return [p.pid for p in alive if p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize(
    "plane, backend, cycles, idle_s",
    [
        ("spmd_graph", "ray", 4, 1.0),  # the graph torn down and rebuilt too
        ("spmd_ray", "ray", 3, 0.0),
        ("spmd_mp", "mp", 20, 0.0),
    ],
)
def test_start_stop_cycles_leave_nothing_behind(
    tmp_path, tiny_model, plane, backend, cycles, idle_s
):
    from vllm.executor import control_plane_env

    script = tmp_path / "cycles.py"
    script.write_text(SCRIPT)
    shm_before = set(os.listdir("/dev/shm"))
    tmp_before = _rings(tempfile.gettempdir())
    started = time.time()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    for key, value in control_plane_env(plane).items():
        env.pop(key, None)
        if value is not None:
            env[key] = value
    env["VLLM_RAY_CGRAPH_IDLE_TEARDOWN_S"] = "0.3"
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            tiny_model("llama_tp4"),
            backend,
            str(cycles),
            str(idle_s),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ended = time.time()
    for marker in ("Traceback", "Exception", "Error"):
        assert marker not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RANKS ")]
    ranks = json.loads(lines[-1].split(" ", 1)[1])
    assert len(ranks) == 2 * cycles
    assert _still_running(ranks) == []
    # Only what the script's lifetime could have started counts.
    leftovers = []
    for pid in _ray_processes(started, ended):
        with contextlib.suppress(psutil.NoSuchProcess):
            leftovers.append(psutil.Process(pid))
    psutil.wait_procs(leftovers, timeout=10)  # give exiting processes a moment
    assert _ray_processes(started, ended) == set()
    assert set(os.listdir("/dev/shm")) - shm_before == set()
    assert _rings(tempfile.gettempdir()) - tmp_before == set()
