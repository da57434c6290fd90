"""Smoke test of benchmarks/benchmark_async_overhead.py: every mode runs the same
requests to the end and the table parses."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_async_overhead_table():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    cmd = [
        sys.executable,
        os.path.join(REPO, "benchmarks", "benchmark_async_overhead.py"),
        "--num-requests", "3", "--output-len", "5", "--repeats", "1",
        "--kv-cache-space", "0.05",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^3 requests x 5 tokens, [0-9]+ steps$", proc.stdout, re.M)
    rows = re.findall(
        r"^(sync|to_thread|thread)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+([-+][0-9.]+)$",
        proc.stdout,
        re.M,
    )
    assert [r[0] for r in rows] == ["sync", "to_thread", "thread"], proc.stdout
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows)
    assert rows[0][4] == "+0.000"
