"""A worker rank killed mid-generate raises one WorkerDiedError (a RuntimeError)
naming the rank, its pid and the cause where known, on every control plane, well
within 10 s; under SPMD nothing else reaches stderr (no traceback from Ray's graph
teardown). Each case runs death_script.py in its own interpreter."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "death_script.py")
CRASH_MARKERS = ("Traceback", "Exception", "Error")


def run_death(plane: str, rank: int, model: str) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, SCRIPT, plane, str(rank), model],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(lines[-1].split(" ", 1)[1]), proc.stderr


@pytest.mark.parametrize(
    "plane, rank",
    [
        ("mp", 1),
        ("ray", 1),
        ("spmd_mp", 0),
        ("spmd_mp", 1),
        ("spmd_ray", 1),
        ("spmd_graph", 0),
        ("spmd_graph", 1),
    ],
)
def test_killed_rank_raises_worker_died_error(tiny_model, plane, rank):
    result, stderr = run_death(plane, rank, tiny_model("llama_tp4"))
    assert result["type"] == "WorkerDiedError" and result["is_runtime_error"]
    message = result["message"]
    assert message.startswith(f"worker rank(s) [{rank}] died"), message
    assert f"pid {result['pid']}" in message
    if plane in ("mp", "spmd_mp"):  # our own child: its exit status is known
        assert "killed by SIGKILL" in message
    assert result["elapsed_s"] < 10.0
    if plane.startswith("spmd"):
        for marker in CRASH_MARKERS:
            assert marker not in stderr, stderr[-4000:]
