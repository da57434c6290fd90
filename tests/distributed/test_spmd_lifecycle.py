"""Start/stop cycles of the SPMD compiled-graph engine leave no process, no
/dev/shm file and no traceback behind, whether the engine is closed with its
compiled graph up or after the graph was torn down for being idle. Runs in a
subprocess that starts (and so must stop) its own Ray."""

import contextlib
import os
import subprocess
import sys
import textwrap
import time

import psutil

SCRIPT = textwrap.dedent(
    """
    import gc, os, sys, time
    from vllm import LLM, SamplingParams

    def cycle(model, how, idle_s=0.0):
        llm = LLM(model, tensor_parallel_size=2, distributed_executor_backend="ray",
                  kv_cache_space=0.01, max_model_len=128)
        out = llm.generate({"prompt_token_ids": [5, 6, 7]},
                           SamplingParams(max_tokens=4), use_tqdm=False)
        assert len(out[0].outputs[0].token_ids) == 4
        time.sleep(idle_s)  # past VLLM_RAY_CGRAPH_IDLE_TEARDOWN_S: graph down
        assert (llm.llm_engine.executor.graph_stats.idle_teardowns > 0) == (idle_s > 0)
        if how == "shutdown":
            llm.shutdown()
        elif how == "gc":
            del llm
            gc.collect()
        return llm if how == "exit" else None

    if __name__ == "__main__":
        model = sys.argv[1]
        cycle(model, "shutdown")
        cycle(model, "shutdown", idle_s=1.0)
        cycle(model, "gc", idle_s=1.0)
        keep = cycle(model, "exit", idle_s=1.0)  # left for interpreter exit
        print("CYCLES-OK", flush=True)
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


def test_start_stop_cycles_leave_nothing_behind(tmp_path, tiny_model):
    script = tmp_path / "cycles.py"
    script.write_text(SCRIPT)
    shm_before = set(os.listdir("/dev/shm"))
    started = time.time()
    env = {
        **os.environ,
        "VLLM_USE_SPMD_WORKER": "1",
        "VLLM_USE_RAY_COMPILED_DAG": "1",
        "VLLM_RAY_CGRAPH_IDLE_TEARDOWN_S": "0.3",
    }
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, str(script), tiny_model("llama_tp4")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ended = time.time()
    assert "CYCLES-OK" in proc.stdout
    for marker in ("Traceback", "Exception", "Error"):
        assert marker not in proc.stderr, proc.stderr[-3000:]
    # Only what the script's lifetime could have started counts.
    leftovers = []
    for pid in _ray_processes(started, ended):
        with contextlib.suppress(psutil.NoSuchProcess):
            leftovers.append(psutil.Process(pid))
    psutil.wait_procs(leftovers, timeout=10)  # give exiting processes a moment
    assert _ray_processes(started, ended) == set()
    assert set(os.listdir("/dev/shm")) - shm_before == set()
