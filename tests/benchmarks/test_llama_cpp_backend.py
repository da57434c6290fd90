"""The benchmarks' llama.cpp backend on the GGUF the benchmarks write: greedy tokens
equal the engine's and transformers' fp32 ones, and the scripts' --backend
llama.cpp prints the same lines as the other backends.

llama-cpp-python is an optional benchmark dependency
(requirements/bench-llamacpp.txt), not a test requirement: without it every test
here is skipped. The GGUF writer itself is tested without llama.cpp in
test_gguf_export.py.
"""

import os
import sys

import pytest

pytest.importorskip(
    "llama_cpp",
    reason="optional benchmark dependency: pip install -r "
    "requirements/bench-llamacpp.txt -c requirements/cpu.txt",
)

from tests.benchmarks.test_benchmark_smoke import (  # noqa: E402
    OUTPUT_TOKENS_RE,
    PROMPT_TOKENS_RE,
    THROUGHPUT_RE,
    run_script,
)
from tests.conftest import hf_greedy  # noqa: E402

BENCHMARKS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "benchmarks",
)
sys.path.insert(0, BENCHMARKS)

from backend_llama_cpp import LlamaCppRunner  # noqa: E402
from gguf_export import write_gguf  # noqa: E402

from vllm import LLM, SamplingParams  # noqa: E402

NEW_TOKENS = 16
TEXTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
)


def engine_greedy(model: str, prompts: list[list[int]], n: int) -> list[list[int]]:
    llm = LLM(model, dtype="float32", kv_cache_space=0.1, max_model_len=256)
    try:
        params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    finally:
        llm.shutdown()
    return [list(o.outputs[0].token_ids) for o in outs]


def llama_cpp_greedy(gguf: str, prompts: list[list[int]], n: int) -> list[list[int]]:
    runner = LlamaCppRunner(gguf, len(prompts), 256, threads=2)
    try:
        return runner.generate(prompts, n, temperature=0.0, seed=0)
    finally:
        runner.close()


@pytest.mark.parametrize(
    "variant", ["tiny", pytest.param("smollm2", marks=pytest.mark.slow)]
)
def test_greedy_tokens_match_engine_and_hf(variant, tiny_model, smollm2_path, tmp_path):
    from transformers import AutoTokenizer

    folder = tiny_model("llama_gqa") if variant == "tiny" else smollm2_path
    tokenizer = AutoTokenizer.from_pretrained(folder)
    vocab = 1024 if variant == "tiny" else None
    prompts = [[t % vocab if vocab else t for t in tokenizer.encode(s)] for s in TEXTS]
    gguf = str(tmp_path / "model.f32.gguf")
    write_gguf(folder, gguf, "f32")
    ours = llama_cpp_greedy(gguf, prompts, NEW_TOKENS)
    assert ours == engine_greedy(folder, prompts, NEW_TOKENS)
    assert ours == hf_greedy(folder, prompts, NEW_TOKENS)[0]


def test_throughput_script_llama_cpp_backend(tiny_model):
    # The same prompt and token totals as the other backends report.
    out = run_script(
        "benchmark_throughput.py",
        tiny_model("llama_gqa"),
        "--backend",
        "llama.cpp",
        "--num-prompts",
        "4",
        "--load-format",
        "auto",
    )
    assert THROUGHPUT_RE.search(out)
    assert PROMPT_TOKENS_RE.search(out).group(1) == str(4 * 8)
    assert OUTPUT_TOKENS_RE.search(out).group(1) == str(4 * 4)
