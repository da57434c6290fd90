"""Smoke tests of the offline benchmarks: each script runs end to end on a tiny
random Llama and prints lines in vLLM's format with sane numbers."""

import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCHMARKS = os.path.join(REPO, "benchmarks")
NUM_PROMPTS, INPUT_LEN, OUTPUT_LEN = 4, 8, 4
NUM_ITERS = 3

FLOAT = r"([0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)"
THROUGHPUT_RE = re.compile(
    rf"^Throughput: {FLOAT} requests/s, {FLOAT} total tokens/s, "
    rf"{FLOAT} output tokens/s$",
    re.M,
)
PROMPT_TOKENS_RE = re.compile(r"^Total num prompt tokens:\s+([0-9]+)$", re.M)
OUTPUT_TOKENS_RE = re.compile(r"^Total num output tokens:\s+([0-9]+)$", re.M)
AVG_RE = re.compile(rf"^Avg latency: {FLOAT} seconds$", re.M)
PERCENTILE_RE = re.compile(rf"^([0-9]+)% percentile latency: {FLOAT} seconds$", re.M)
MFU_RE = re.compile(
    rf"^MFU: {FLOAT}% \({FLOAT} GFLOP/s of model matmuls / {FLOAT} GFLOP/s", re.M
)


def run_benchmark(script: str, *args: str, timeout: int = 180) -> str:
    """Runs benchmarks/<script> offline with this checkout importable."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, os.path.join(BENCHMARKS, script), *args]
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


def run_script(script: str, model: str, *extra: str) -> str:
    return run_benchmark(
        script,
        "--model",
        model,
        "--load-format",
        "dummy",
        "--kv-cache-space",
        "0.05",
        "--input-len",
        str(INPUT_LEN),
        "--output-len",
        str(OUTPUT_LEN),
        *extra,
    )


def run_throughput(model: str, tmp_path_factory, *extra: str) -> tuple[str, dict]:
    out_json = tmp_path_factory.mktemp("throughput") / "result.json"
    stdout = run_script(
        "benchmark_throughput.py",
        model,
        "--num-prompts",
        str(NUM_PROMPTS),
        "--disable-tqdm",
        "--output-json",
        str(out_json),
        *extra,
    )
    return stdout, json.loads(out_json.read_text())


@pytest.fixture(scope="module")
def vllm_run(tiny_dummy_model, tmp_path_factory):
    return run_throughput(
        tiny_dummy_model, tmp_path_factory, "--backend", "vllm", "--report-mfu"
    )


@pytest.fixture(scope="module")
def hf_run(tiny_dummy_model, tmp_path_factory):
    return run_throughput(
        tiny_dummy_model,
        tmp_path_factory,
        "--backend",
        "hf",
        "--hf-max-batch-size",
        "3",  # 4 prompts: a full batch and a partial one
    )


def parse_throughput(stdout: str) -> dict:
    rates = THROUGHPUT_RE.findall(stdout)
    prompts = PROMPT_TOKENS_RE.findall(stdout)
    outputs = OUTPUT_TOKENS_RE.findall(stdout)
    assert len(rates) == len(prompts) == len(outputs) == 1, stdout
    req_s, tok_s, out_s = (float(x) for x in rates[0])
    return dict(
        req_s=req_s,
        tok_s=tok_s,
        out_s=out_s,
        prompt_tokens=int(prompts[0]),
        output_tokens=int(outputs[0]),
    )


@pytest.mark.parametrize("which", ["vllm_run", "hf_run"])
def test_throughput_lines_parse_and_agree(which, request):
    stdout, result = request.getfixturevalue(which)
    got = parse_throughput(stdout)
    assert got["req_s"] > 0 and got["tok_s"] > 0 and got["out_s"] > 0
    assert got["prompt_tokens"] == NUM_PROMPTS * INPUT_LEN
    assert got["output_tokens"] == NUM_PROMPTS * OUTPUT_LEN
    # The three printed rates share one elapsed time, so their ratios are the
    # ratios of the totals (up to the 2-decimal rounding).
    total = got["prompt_tokens"] + got["output_tokens"]
    assert got["tok_s"] / got["req_s"] == pytest.approx(total / NUM_PROMPTS, rel=0.05)
    assert got["out_s"] / got["tok_s"] == pytest.approx(
        got["output_tokens"] / total, rel=0.05
    )
    assert result["num_requests"] == NUM_PROMPTS
    assert result["total_num_tokens"] == total
    assert result["elapsed_time"] > 0
    assert result["requests_per_second"] == pytest.approx(
        NUM_PROMPTS / result["elapsed_time"]
    )
    assert result["args"]["backend"] == which.split("_")[0]


def test_mfu_line_agrees_with_the_run(vllm_run, tiny_dummy_model, bench):
    from benchmark_machine import model_flops

    from vllm.transformers_utils.model_resolver import load_hf_config

    stdout, result = vllm_run
    (util, achieved, rate), *rest = MFU_RE.findall(stdout)
    assert not rest and float(rate) > 0
    flops = model_flops(
        load_hf_config(tiny_dummy_model),
        result["total_prompt_tokens"],
        result["total_output_tokens"],
    )
    assert result["model_gflops"] == pytest.approx(flops / result["elapsed_time"] / 1e9)
    assert result["mfu"] == pytest.approx(
        result["model_gflops"] / result["matmul_gflops"]
    )
    assert float(util) == pytest.approx(100 * result["mfu"], abs=0.06)
    assert float(achieved) == pytest.approx(result["model_gflops"], abs=0.06)


def test_hf_and_vllm_report_same_totals(vllm_run, hf_run):
    vllm_got, hf_got = parse_throughput(vllm_run[0]), parse_throughput(hf_run[0])
    for key in ("prompt_tokens", "output_tokens"):
        assert vllm_got[key] == hf_got[key]
    assert vllm_run[1]["num_requests"] == hf_run[1]["num_requests"]
    assert vllm_run[1]["total_num_tokens"] == hf_run[1]["total_num_tokens"]


def test_latency_lines_parse(tiny_dummy_model, tmp_path):
    out_json = tmp_path / "latency.json"
    stdout = run_script(
        "benchmark_latency.py",
        tiny_dummy_model,
        "--batch-size",
        "2",
        "--num-iters-warmup",
        "1",
        "--num-iters",
        str(NUM_ITERS),
        "--output-json",
        str(out_json),
    )
    avg = AVG_RE.findall(stdout)
    assert len(avg) == 1, stdout
    avg = float(avg[0])
    rows = [(int(p), float(s)) for p, s in PERCENTILE_RE.findall(stdout)]
    assert [p for p, _ in rows] == [10, 25, 50, 75, 90, 99]
    seconds = [s for _, s in rows]
    assert all(s > 0 for s in seconds) and avg > 0
    assert seconds == sorted(seconds)
    result = json.loads(out_json.read_text())
    assert len(result["latencies"]) == NUM_ITERS
    assert min(result["latencies"]) <= avg <= max(result["latencies"])
    assert result["avg_latency"] == pytest.approx(avg)


@pytest.fixture
def bench(monkeypatch):
    """The benchmarks folder importable, as when a script is run from it."""
    monkeypatch.syspath_prepend(BENCHMARKS)
    import benchmark_throughput
    import benchmark_utils

    return benchmark_utils, benchmark_throughput


def test_random_prompts_exact_length_seeded_and_ordinary(bench, smollm2_path):
    from vllm.transformers_utils.model_resolver import load_tokenizer

    utils = bench[0]
    tokenizer = load_tokenizer(smollm2_path)
    allowed = utils.sampleable_token_ids(tokenizer, vocab_size=1024)
    prompts = utils.random_prompts(allowed, num_prompts=6, input_len=9, seed=3)
    assert [len(p) for p in prompts] == [9] * 6
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    flat = {t for p in prompts for t in p}
    assert not flat & special
    assert all(0 <= t < 1024 for t in flat)
    assert prompts == utils.random_prompts(allowed, 6, 9, seed=3)
    assert prompts != utils.random_prompts(allowed, 6, 9, seed=4)


def test_dataset_prompts_strings_and_objects(bench, smollm2_path, tmp_path):
    from vllm.transformers_utils.model_resolver import load_tokenizer

    utils = bench[0]
    tokenizer = load_tokenizer(smollm2_path)
    path = tmp_path / "prompts.json"
    texts = ["The capital of France is", "Once upon a time", "unused"]
    path.write_text(json.dumps([texts[0], {"prompt": texts[1]}, texts[2]]))
    got = utils.dataset_prompts(str(path), tokenizer, num_prompts=2)
    assert got == [tokenizer.encode(texts[0]), tokenizer.encode(texts[1])]
    path.write_text(json.dumps([{"text": "no prompt key"}]))
    with pytest.raises(ValueError, match="entry 0"):
        utils.dataset_prompts(str(path), tokenizer, num_prompts=1)


@pytest.mark.parametrize(
    "argv",
    [
        ["--input-len", "8"],  # no --output-len
        ["--output-len", "4"],  # neither --input-len nor --dataset
        ["--dataset", "x.json", "--input-len", "8", "--output-len", "4"],
        ["--input-len", "8", "--output-len", "4", "--backend", "hf"],
        ["--input-len", "8", "--output-len", "4", "--hf-max-batch-size", "2"],
        ["--input-len", "8", "--output-len", "4", "--backend", "llama.cpp", "-tp", "2"],
        ["--input-len", "8", "--output-len", "4", "--num-loras", "2"],  # LoRA off
    ],
)
def test_throughput_rejects_bad_flag_combinations(bench, argv):
    module = bench[1]
    parser = module.make_parser()
    with pytest.raises(SystemExit):
        module.validate(parser, parser.parse_args(argv))


def test_throughput_accepts_good_flags(bench):
    module = bench[1]
    parser = module.make_parser()
    argv = ["--input-len", "8", "--output-len", "4", "--backend", "hf"]
    args = parser.parse_args([*argv, "--hf-max-batch-size", "2", "-tp", "1"])
    module.validate(parser, args)  # must not exit
    assert args.hf_max_batch_size == 2 and args.tensor_parallel_size == 1


def test_throughput_max_loras_defaults_to_num_loras(bench):
    """With the engine's max_loras=1, four adapters would run a quarter of the
    batch per step; an explicit --max-loras still wins."""
    module = bench[1]
    parser = module.make_parser()
    lora = ["--input-len", "8", "--output-len", "4", "--enable-lora"]
    for extra, want in [
        (["--num-loras", "4"], 4),
        (["--num-loras", "4", "--max-loras", "2"], 2),
        ([], 1),
    ]:
        args = parser.parse_args([*lora, *extra])
        module.validate(parser, args)
        assert args.max_loras == want


def test_throughput_with_random_lora_adapters(tiny_dummy_model, tmp_path_factory):
    """Each prompt runs with one of two random adapters; the lines still parse
    and count every token."""
    stdout, result = run_throughput(
        tiny_dummy_model,
        tmp_path_factory,
        "--enable-lora",
        "--num-loras",
        "2",
        "--max-loras",
        "2",
        "--max-lora-rank",
        "8",
    )
    got = parse_throughput(stdout)
    assert got["output_tokens"] == NUM_PROMPTS * OUTPUT_LEN
    assert result["args"]["num_loras"] == 2 and result["args"]["enable_lora"]


def test_check_prompts_refuses_what_the_engine_would_alter(bench):
    utils = bench[0]
    prompts = [[5] * 10, [7] * 6]
    utils.check_prompts(prompts, output_len=6, vocab_size=8, max_len=16)
    with pytest.raises(ValueError, match="max_model_len"):
        utils.check_prompts(prompts, output_len=7, vocab_size=8, max_len=16)
    with pytest.raises(ValueError, match="vocabulary"):
        utils.check_prompts(prompts, output_len=6, vocab_size=7, max_len=16)
