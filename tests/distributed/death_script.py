"""Run by test_worker_death.py in a subprocess, so its stderr can be read whole.

Usage: death_script.py PLANE RANK MODEL
Starts a TP=2 LLM on control plane PLANE (see vllm.executor.CONTROL_PLANES), kills
worker RANK with SIGKILL one second into a long generate, and prints on stdout
``RESULT {json}``: the error's type and message, the dead rank's pid and how long
the error took to arrive.
"""

import json
import os
import signal
import sys
import threading
import time


def generate_until_error(llm, params) -> dict:
    """Generates 8 short prompts with ``params``; the error it ends with (None
    if it does not): type, whether a RuntimeError, message, and ``elapsed_s``."""
    prompts = [{"prompt_token_ids": [5 + i] * 8} for i in range(8)]
    start = time.monotonic()
    try:
        llm.generate(prompts, params, use_tqdm=False)
        error = None
    except Exception as e:
        error = e
    return {
        "type": type(error).__name__,
        "is_runtime_error": isinstance(error, RuntimeError),
        "message": str(error),
        "elapsed_s": time.monotonic() - start,
    }


def main() -> None:
    plane, rank, model = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    from vllm.executor import CONTROL_PLANES, control_plane_env

    for key, value in control_plane_env(plane).items():
        os.environ.pop(key, None)
        if value is not None:
            os.environ[key] = value
    from vllm import LLM, SamplingParams

    llm = LLM(
        model,
        tensor_parallel_size=2,
        distributed_executor_backend=CONTROL_PLANES[plane].backend,
        kv_cache_space=0.05,
        load_format="dummy",  # what the weights are does not matter here
    )
    pids = llm.llm_engine.executor.collective_rpc("get_pid")
    threading.Timer(1.0, os.kill, (pids[rank], signal.SIGKILL)).start()
    result = generate_until_error(llm, SamplingParams(max_tokens=400, ignore_eos=True))
    llm.shutdown()
    result["pid"] = pids[rank]
    print("RESULT", json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
