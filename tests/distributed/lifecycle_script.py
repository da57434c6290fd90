"""Run by test_lifecycle.py in a subprocess (legacy driver-worker executors).

Usage: lifecycle_script.py BACKEND ENDING MODEL [join]
  BACKEND  mp | ray
  ENDING   shutdown (llm.shutdown()), del (del llm; gc.collect()) or exit (the LLM
           is still referenced when the interpreter exits; no cleanup call at all)
  join     ray only: start Ray here first, so the backend joins it instead of
           starting its own

Starts a TP=2 LLM, generates (so the follower ranks sit in their execution loop,
the state a user leaves them in), then ends it. Prints on stdout
``STARTED {json}``: the worker processes, every process this script started
(Ray's included) and whether the backend started Ray; and, unless ENDING is exit,
``ENDED {json}``: which of them are still alive afterwards; and last, at exit,
``EXITED {json}``.
"""

import atexit
import contextlib
import gc
import glob
import json
import os
import sys
import time

import psutil

# Keeps the LLM alive until interpreter teardown in the "exit" case; a local would
# be collected when main() returns, which is the "del" case again.
_kept = []


def identity(proc: psutil.Process) -> list:
    """[pid, start time, command line]: a pid alone may be reused once it is gone."""
    return [proc.pid, proc.create_time(), " ".join(proc.cmdline())[:200]]


def still_alive(procs: list[list], grace_s: float = 10.0) -> list[list]:
    """Those of ``procs`` alive after ``grace_s``; a killed Ray actor takes a
    moment to go, so poll rather than look once."""
    deadline = time.monotonic() + grace_s
    while True:
        alive = []
        for pid, started, cmd in procs:
            try:
                proc = psutil.Process(pid)
                if proc.create_time() == started and proc.status() != "zombie":
                    alive.append([pid, started, cmd])
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def descendants() -> list[list]:
    """Everything this script started, taken while the tree is whole (Ray's
    workers are children of its raylet and are orphaned once it dies)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            found.append(identity(proc))
    return found


def emit(stage: str, data: dict) -> None:
    print(stage, json.dumps(data), flush=True)


def report_exit() -> None:
    """Registered first, so it runs last: how many Ray sessions this process
    started in all (a Ray call made after Ray's own exit hook starts a new one)."""
    mine = glob.glob(f"/tmp/ray/session_*_{os.getpid()}")
    emit("EXITED", {"ray_sessions": len(mine)})


def main() -> None:
    atexit.register(report_exit)
    backend, ending, model = sys.argv[1:4]
    join = sys.argv[4:] == ["join"]
    if join:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    from vllm import LLM, SamplingParams

    llm = LLM(
        model,
        tensor_parallel_size=2,
        distributed_executor_backend=backend,
        kv_cache_space=0.02,
        max_model_len=128,
    )
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    out = llm.generate({"prompt_token_ids": [5, 6, 7, 8]}, params, use_tqdm=False)
    executor = llm.llm_engine.executor
    pids = executor.collective_rpc("get_pid")
    workers = [identity(psutil.Process(p)) for p in pids[1:]]
    started = {
        "num_tokens": len(out[0].outputs[0].token_ids),
        "driver_pid": pids[0],
        "workers": workers,
        "descendants": descendants(),
        "started_ray": bool(getattr(executor, "_started_ray", False)),
    }
    emit("STARTED", started)
    del executor, out
    if ending == "exit":
        _kept.append(llm)
        return
    if ending == "shutdown":
        llm.shutdown()
    else:
        del llm
        gc.collect()
    ray_up = False
    if backend == "ray":
        import ray

        ray_up = ray.is_initialized()
    # multiprocessing's resource tracker lives as long as this interpreter, and a
    # Ray started here (join) outlives the LLM by design.
    mine = [p for p in started["descendants"] if "resource_tracker" not in p[2]]
    emit(
        "ENDED",
        {
            "workers_alive": still_alive(workers),
            "descendants_alive": None if join else still_alive(mine),
            "ray_initialized": ray_up,
        },
    )


if __name__ == "__main__":
    main()
