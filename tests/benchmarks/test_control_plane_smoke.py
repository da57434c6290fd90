"""Smoke test of benchmarks/benchmark_control_plane.py and its plot: the smallest
grid on the in-process path, SPMD over our shared-memory rings (spawned ranks,
no layer) and the SPMD compiled-graph path, end to end, with the idle
measurement (and the graph's rebuild after it)."""

import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCHMARKS = os.path.join(REPO, "benchmarks")
CONTEXT = 64
NUM = r"([0-9]+(?:\.[0-9]+)?)"
ROW_RE = re.compile(
    rf"^(uni|spmd_mp|spmd_graph)\s+([0-9]+)\s+([0-9]+)\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}$",
    re.M,
)
IDLE_RE = re.compile(
    rf"^(uni|spmd_mp|spmd_graph)\s+{NUM}\s+([0-9]+)\s+{NUM}\s+{NUM}", re.M
)


def _run(script: str, *args: str) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, script), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[str, str]:
    out = str(tmp_path_factory.mktemp("control_plane") / "cp.json")
    stdout = _run(
        "benchmark_control_plane.py",
        "--paths", "uni,spmd_mp,spmd_graph",
        "--num-layers", "0",
        "--batch-sizes", "1",
        "--context-lens", str(CONTEXT),
        "--num-steps", "2",
        "--idle-seconds", "1",
        "--output-json", out,
    )  # fmt: skip
    return stdout, out


@pytest.mark.distributed
def test_table_and_json_agree_and_are_sane(bench):
    stdout, json_path = bench
    table = {m[0]: [float(x) for x in m[1:]] for m in ROW_RE.findall(stdout)}
    assert set(table) == {"uni", "spmd_mp", "spmd_graph"}, stdout
    with open(json_path, encoding="utf-8") as f:
        results = {r["path"]: r for r in json.load(f)["results"]}
    assert set(results) == set(table)
    for path, (batch, context, ms, p50, sent, back, cpu) in table.items():
        row = results[path]
        assert (batch, context) == (1, CONTEXT) == (row["batch"], row["context"])
        assert ms == pytest.approx(row["ms_per_step"], abs=1e-3)
        assert sent == pytest.approx(row["bytes_sent_per_step"], abs=0.1)
        assert back == pytest.approx(row["bytes_back_per_step"], abs=0.1)
        assert ms > 0 and p50 > 0 and cpu > 0
    # In-process: nothing crosses a process boundary.
    assert table["uni"][4] == 0 and table["uni"][5] == 0
    for name in ("spmd_mp", "spmd_graph"):
        spmd = results[name]
        assert spmd["bytes_sent_per_step"] > 0 and spmd["bytes_back_per_step"] > 0
        # A decode step is a delta: far fewer bytes than the prompt's token
        # ids, which the first (prefill) step had to carry in full.
        assert spmd["bytes_sent_per_step"] < CONTEXT


@pytest.mark.distributed
def test_idle_table_and_graph_rebuild(bench):
    stdout, json_path = bench
    table = {m[0]: [float(x) for x in m[1:]] for m in IDLE_RE.findall(stdout)}
    assert set(table) == {"uni", "spmd_mp", "spmd_graph"}, stdout
    with open(json_path, encoding="utf-8") as f:
        idle = {r["path"]: r for r in json.load(f)["idle"]}
    assert set(idle) == set(table)
    for path, (cpu, procs, first, warm) in table.items():
        row = idle[path]
        assert cpu == pytest.approx(row["idle_cpu_percent"], abs=0.1)
        assert procs == row["num_processes"] == (1 if path == "uni" else 3)
        assert first > 0 and warm > 0 and row["idle_seconds"] == 1
    # Idle ranks of the ring sleep in the kernel (a generous cap: the machine
    # is shared).
    assert 0 <= idle["spmd_mp"]["idle_cpu_percent"] < 20
    # Only the graph has something to rebuild after the idle period.
    assert "graph_rebuild_ms" not in idle["uni"]
    assert idle["spmd_graph"]["graph_rebuild_ms"] > 0
    assert idle["spmd_graph"]["graph_teardown_ms"] > 0


@pytest.mark.distributed
def test_plot_writes_png(bench, tmp_path):
    _, json_path = bench
    png = tmp_path / "cp.png"
    _run("plot_control_plane.py", "--input-json", json_path, "--output", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
