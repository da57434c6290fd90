"""The legacy mp and Ray executors leave no worker process and no traceback behind,
whether the LLM is shut down, collected, or simply left to interpreter exit; and a
TP size the model cannot be split by fails before any process starts.

Each lifecycle case runs lifecycle_script.py in its own interpreter, so exit is
real and stderr can be read whole."""

import contextlib
import json
import os
import re
import subprocess
import sys

import psutil
import pytest
import torch

from vllm import LLM, SamplingParams

SCRIPT = os.path.join(os.path.dirname(__file__), "lifecycle_script.py")
CRASH_MARKERS = ("Traceback", "Exception", "Error")


def run_script(*args: str) -> dict[str, dict]:
    """-> the script's reports by stage; asserts a clean exit."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, SCRIPT, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for marker in CRASH_MARKERS:
        assert marker not in proc.stderr, proc.stderr[-4000:]
    reports = {}
    for line in proc.stdout.splitlines():
        stage, _, payload = line.partition(" ")
        if stage in ("STARTED", "ENDED", "EXITED"):
            reports[stage] = json.loads(payload)
    return reports


def alive(procs: list[list], grace_s: float = 10.0) -> list[list]:
    """Those of the reported [pid, start time, cmdline] still running after
    ``grace_s`` (orphans get a moment to notice their parent is gone)."""
    found = []
    for pid, started, _cmd in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            if proc.create_time() == started:
                found.append(proc)
    _, still = psutil.wait_procs(found, timeout=grace_s)
    return [[p.pid, " ".join(p.cmdline())] for p in still if _running(p)]


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def ray_running_elsewhere() -> bool:
    """A Ray already up on this machine is joined instead of started."""
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "gcs_server":
            return True
    return False


@pytest.mark.parametrize("ending", ["shutdown", "del", "exit"])
@pytest.mark.parametrize("backend", ["mp", "ray"])
def test_no_worker_outlives_the_llm(tiny_model, backend, ending):
    foreign_ray = ray_running_elsewhere()
    reports = run_script(backend, ending, tiny_model("llama_tp4"))
    started, ended = reports["STARTED"], reports.get("ENDED")
    assert started["num_tokens"] == 8
    assert len(started["workers"]) == 1
    assert started["driver_pid"] not in [w[0] for w in started["workers"]]
    if backend == "ray" and not foreign_ray:
        assert started["started_ray"]
        # Ray's own processes, started on the backend's behalf, are children.
        assert any("raylet" in p[2] for p in started["descendants"])
    if backend == "mp":
        assert [w[:2] for w in started["workers"]] == [
            p[:2]
            for p in started["descendants"]
            if "vllm.executor.worker_process" in p[2]
        ]
    if ended is not None:  # checked inside the script, before it exits
        assert ended["workers_alive"] == []
        assert ended["descendants_alive"] == []
        assert not ended["ray_initialized"] or not started["started_ray"]
    # Cleanup ran while Ray was still up: no Ray call revived it during exit.
    assert reports["EXITED"]["ray_sessions"] == int(started["started_ray"])
    # And once the interpreter is gone, nothing it started is left.
    assert alive(started["workers"] + started["descendants"]) == []


def test_ray_backend_leaves_a_joined_ray_running(tiny_model):
    reports = run_script("ray", "shutdown", tiny_model("llama_tp4"), "join")
    started, ended = reports["STARTED"], reports["ENDED"]
    assert not started["started_ray"]
    # Only the actors of this LLM go; the Ray the script started stays up.
    assert ended["workers_alive"] == []
    assert ended["ray_initialized"]
    assert reports["EXITED"]["ray_sessions"] == 1
    assert alive(started["workers"] + started["descendants"]) == []


def _tree() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.mark.parametrize("backend", ["mp", "ray"])
@pytest.mark.parametrize(
    "model, tp, heads",
    [("llama_tp4", 3, 8), ("smollm2", 2, 9), ("smollm2", 6, 9)],
)
def test_indivisible_tp_fails_before_any_process(
    tiny_model, smollm2_path, backend, model, tp, heads
):
    import ray

    path = smollm2_path if model == "smollm2" else tiny_model(model)
    ray_was_up = ray.is_initialized()
    before = _tree()
    with pytest.raises(ValueError) as err:
        LLM(path, tensor_parallel_size=tp, distributed_executor_backend=backend)
    numbers = re.findall(r"\d+", str(err.value))
    assert str(tp) in numbers and str(heads) in numbers, str(err.value)
    assert _tree() - before == set()
    assert ray.is_initialized() == ray_was_up


def test_tp_engine_outlives_failed_calls_and_engines_beside_it(tiny_model):
    """The legacy driver (rank 0) runs in this process and owns its world group:
    a second TP engine is refused before it starts anything, and a single-rank
    engine started and shut down beside it must not tear that group down. A call
    that fails on the driver leaves no stale reply to answer the next call."""
    import ray

    path = tiny_model("llama_tp4")
    kwargs = dict(kv_cache_space=0.02, max_model_len=128)
    prompt = {"prompt_token_ids": [5, 6, 7, 8]}
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    threads = torch.get_num_threads()
    llm = LLM(path, tensor_parallel_size=2, distributed_executor_backend="mp", **kwargs)
    try:
        want = llm.generate(prompt, params, use_tqdm=False)[0].outputs[0].token_ids
        executor = llm.llm_engine.executor
        with pytest.raises(AttributeError):
            executor.collective_rpc("no_such_method")
        pids = executor.collective_rpc("get_pid")
        assert pids[0] == os.getpid() and len(set(pids)) == 2
        del executor
        before, ray_was_up = _tree(), ray.is_initialized()
        for backend in ("mp", "ray"):
            with pytest.raises(RuntimeError, match="tensor-parallel engine"):
                LLM(path, tensor_parallel_size=2, distributed_executor_backend=backend)
        assert _tree() == before
        assert ray.is_initialized() == ray_was_up
        uni = LLM(path, **kwargs)
        assert (
            uni.generate(prompt, params, use_tqdm=False)[0].outputs[0].token_ids == want
        )
        uni.shutdown()
        got = llm.generate(prompt, params, use_tqdm=False)[0].outputs[0].token_ids
        assert got == want
    finally:
        llm.shutdown()
        torch.set_num_threads(threads)
