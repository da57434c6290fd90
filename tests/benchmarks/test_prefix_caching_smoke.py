"""Smoke test of benchmark_prefix_caching.py on a tiny random Llama: both settings
run, print vLLM-style lines, and report the hit rate the workload implies."""

import json
import re

import pytest

from tests.benchmarks.test_benchmark_smoke import FLOAT, THROUGHPUT_RE, run_benchmark

NUM_PROMPTS, PREFIX_LEN, OUTPUT_LEN, BLOCK_SIZE = 4, 32, 4, 16
HIT_RE = re.compile(
    rf"^Prefix cache hit rate: {FLOAT}% \(([0-9]+) of ([0-9]+) prompt tokens\)$", re.M
)
SPEEDUP_RE = re.compile(rf"^Speedup with prefix caching: {FLOAT}x$", re.M)


def _run(model: str, tmp_path, *extra: str) -> tuple[str, dict]:
    out_json = tmp_path / "prefix.json"
    stdout = run_benchmark(
        "benchmark_prefix_caching.py",
        "--model",
        model,
        "--load-format",
        "dummy",
        "--kv-cache-space",
        "0.05",
        "--block-size",
        str(BLOCK_SIZE),
        "--num-prompts",
        str(NUM_PROMPTS),
        "--prefix-len",
        str(PREFIX_LEN),
        "--input-length-range",
        "40:47",
        "--output-len",
        str(OUTPUT_LEN),
        "--disable-tqdm",
        "--output-json",
        str(out_json),
        *extra,
        timeout=300,
    )
    return stdout, json.loads(out_json.read_text())


def test_both_settings_lines_and_hit_rates(tiny_dummy_model, tmp_path):
    stdout, result = _run(tiny_dummy_model, tmp_path, "--num-iters", "2")
    assert f"Sampled {NUM_PROMPTS} requests." in stdout
    assert len(re.findall(r"^cost time ", stdout, re.M)) == 4  # 2 settings x 2
    rates = THROUGHPUT_RE.findall(stdout)
    hits = HIT_RE.findall(stdout)
    assert len(rates) == 2 and len(hits) == 2
    off, on = result["prefix caching off"], result["prefix caching on"]
    for run in (off, on):
        assert run["num_requests"] == NUM_PROMPTS
        assert run["output_tokens"] == NUM_PROMPTS * OUTPUT_LEN
        assert NUM_PROMPTS * 40 <= run["prompt_tokens"] <= NUM_PROMPTS * 47
        assert run["cache_queries"] == run["prompt_tokens"]
        assert len(run["all_elapsed"]) == 2
        assert run["elapsed"] in run["all_elapsed"]
    assert off["cache_hits"] == 0 and float(hits[0][0]) == 0.0
    # The first request computes the 2-block prefix; the three others reuse it
    # (the distinct suffixes of 8 to 15 tokens fill no further shared block).
    assert on["cache_hits"] == (NUM_PROMPTS - 1) * PREFIX_LEN
    assert int(hits[1][1]) == on["cache_hits"]
    assert float(hits[1][0]) == pytest.approx(100 * on["hit_rate"], abs=0.05)
    [speedup] = SPEEDUP_RE.findall(stdout)
    assert float(speedup) == pytest.approx(off["elapsed"] / on["elapsed"], rel=0.01)


def test_flag_selects_one_setting(tiny_dummy_model, tmp_path):
    stdout, result = _run(tiny_dummy_model, tmp_path, "--enable-prefix-caching")
    assert list(k for k in result if k != "args") == ["prefix caching on"]
    assert "Speedup" not in stdout
    assert len(THROUGHPUT_RE.findall(stdout)) == 1
