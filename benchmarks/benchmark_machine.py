"""What this CPU can do, measured now: copy bandwidth and torch matmul rates, and
from them the limits a model run is judged against (model FLOP utilisation of a
throughput run, the memory-bandwidth bound of batch-1 decode).

    python benchmarks/benchmark_machine.py [--threads 2] [--model M]

Copy bandwidth counts bytes read plus bytes written (a copy of N bytes moves 2N).
Matmul rates are ``F.linear(x [M, K], w [N, K])``: 2*M*N*K FLOPs per call, the
shape the model's linear layers use.
"""

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from vllm.cpu_info import NATIVE_BF16_FLAGS as BF16_FLAGS
from vllm.cpu_info import cpu_flags

# Flags that give a CPU native bf16 dot products (AVX-512 BF16, AMX).
SHOWN_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_bf16",
    "avx512_fp16",
    "amx_bf16",
)
# The shapes issue 15 quotes: a square GEMM, and 32 tokens through an MLP gate/up.
MATMUL_SHAPES = ((2048, 2048, 2048), (32, 576, 1536))  # (M, K, N)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def bf16_support() -> tuple[bool, str]:
    """(native bf16 matmuls available, why): the CPU must have the instructions
    and torch's oneDNN must use them; otherwise bf16 is emulated and slower."""
    have = [f for f in BF16_FLAGS if f in cpu_flags()]
    capability = torch.backends.cpu.get_cpu_capability()
    if not have:
        return False, f"CPU has none of {', '.join(BF16_FLAGS)} (torch: {capability})"
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False, f"CPU has {', '.join(have)} but torch's oneDNN has no bf16 path"
    return True, f"{', '.join(have)}, torch: {capability}"


def _median_rate(fn: Callable[[], None], work: float, min_seconds: float) -> float:
    """work per second of ``fn``: median of 3 timed runs of at least
    ``min_seconds`` each, after one untimed call."""
    fn()
    rates = []
    for _ in range(3):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        rates.append(work * calls / elapsed)
    return statistics.median(rates)


def copy_bandwidth_gbs(nbytes: int = 256 << 20, min_seconds: float = 0.5) -> float:
    """GB/s (1e9) of bytes read + written by a large fp32 tensor copy."""
    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    return _median_rate(lambda: dst.copy_(src), 2 * nbytes, min_seconds) / 1e9


def matmul_gflops(
    m: int, k: int, n: int, dtype: torch.dtype = torch.float32, min_seconds=0.5
) -> float:
    """GFLOP/s of ``F.linear(x [m, k], w [n, k])`` in ``dtype``."""
    x = torch.randn(m, k).to(dtype)
    w = torch.randn(n, k).to(dtype)
    with torch.inference_mode():
        return _median_rate(lambda: F.linear(x, w), 2 * m * n * k, min_seconds) / 1e9


def matmul_params(hf_config: Any) -> tuple[int, int]:
    """(weights of the decoder layers' linear layers, weights of the LM head)
    of a Llama-style config: the matrices every token multiplies by."""
    c = hf_config
    heads = c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    attn = c.hidden_size * head_dim * (2 * heads + 2 * kv_heads)  # q, o, k, v
    mlp = 3 * c.hidden_size * c.intermediate_size  # gate, up, down
    return c.num_hidden_layers * (attn + mlp), c.vocab_size * c.hidden_size


def model_flops(hf_config: Any, prompt_tokens: int, output_tokens: int) -> float:
    """Matmul FLOPs a run needs at least: every token goes through the decoder
    layers; the LM head runs once per generated token (the first one from the
    prompt's last row), not for the other prompt rows. Attention scores are
    left out."""
    body, head = matmul_params(hf_config)
    return 2.0 * (body * (prompt_tokens + output_tokens) + head * output_tokens)


def mfu(flops: float, seconds: float, matmul_rate_gflops: float) -> float:
    """Model FLOP utilisation: achieved model FLOP/s over a measured matmul rate."""
    return flops / seconds / (matmul_rate_gflops * 1e9)


def fp32_weight_bytes_per_token(hf_config: Any) -> int:
    body, head = matmul_params(hf_config)
    return 4 * (body + head)


def bandwidth_limit_tokens_per_s(hf_config: Any, copy_gbs: float) -> float:
    """Batch-1 decode bound: every fp32 weight is read once per token."""
    return copy_gbs * 1e9 / fp32_weight_bytes_per_token(hf_config)


def measure(threads: int, hf_config: Any | None) -> dict[str, Any]:
    torch.set_num_threads(threads)
    flags = cpu_flags()
    bf16_ok, bf16_why = bf16_support()
    out: dict[str, Any] = {
        "cpu": cpu_name(),
        "cpu_flags": [f for f in SHOWN_FLAGS if f in flags],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": threads,
        "copy_gbs": copy_bandwidth_gbs(),
        "fp32_gflops": {
            f"{m}x{k}x{n}": matmul_gflops(m, k, n) for m, k, n in MATMUL_SHAPES
        },
        "bf16": bf16_why,
        "bf16_gflops": {},
    }
    if bf16_ok:
        out["bf16_gflops"] = {
            f"{m}x{k}x{n}": matmul_gflops(m, k, n, torch.bfloat16)
            for m, k, n in MATMUL_SHAPES
        }
    if hf_config is not None:
        body, head = matmul_params(hf_config)
        out["matmul_params"] = body + head
        out["fp32_weight_bytes_per_token"] = fp32_weight_bytes_per_token(hf_config)
        out["batch1_limit_tokens_per_s"] = bandwidth_limit_tokens_per_s(
            hf_config, out["copy_gbs"]
        )
    return out


def print_report(r: dict[str, Any]) -> None:
    print(
        f"CPU: {r['cpu']}; flags: {' '.join(r['cpu_flags']) or '-'}; "
        f"torch: {r['torch_cpu_capability']}; threads: {r['threads']}"
    )
    print(f"Copy bandwidth: {r['copy_gbs']:.2f} GB/s (read + written, fp32 copy)")
    for shape, rate in r["fp32_gflops"].items():
        print(f"fp32 matmul {shape}: {rate:.1f} GFLOP/s")
    if r["bf16_gflops"]:
        for shape, rate in r["bf16_gflops"].items():
            print(f"bf16 matmul {shape}: {rate:.1f} GFLOP/s")
    else:
        print(f"bf16 matmul: not measured ({r['bf16']})")
    if "matmul_params" in r:
        print(
            f"Model: {r['matmul_params'] / 1e6:.1f} M matmul weights, "
            f"{r['fp32_weight_bytes_per_token'] / 1e6:.1f} MB fp32 per token"
        )
        print(
            f"Batch-1 decode bandwidth limit: "
            f"{r['batch1_limit_tokens_per_s']:.1f} tokens/s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--model", default=None, help="default: bundled SmolLM2")
    parser.add_argument("--no-model", action="store_true", help="machine lines only")
    parser.add_argument("--output-json", default=None)
    args = parser.parse_args()
    hf_config = None
    if not args.no_model:
        from vllm.transformers_utils.model_resolver import DEFAULT_MODEL, load_hf_config

        hf_config = load_hf_config(args.model or DEFAULT_MODEL)
    result = measure(args.threads, hf_config)
    print_report(result)
    if args.output_json:
        from benchmark_utils import write_json

        write_json(args.output_json, result)


if __name__ == "__main__":
    main()
