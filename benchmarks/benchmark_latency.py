"""Latency of one batch: the time from handing the engine ``--batch-size`` prompts
to having all their outputs, repeated ``--num-iters`` times after a warm-up.

    python benchmarks/benchmark_latency.py --input-len 32 --output-len 128 \
        --batch-size 8 --num-iters-warmup 2 --num-iters 10 [--backend llama.cpp]
"""

import argparse
import time
from collections.abc import Callable

import backend_llama_cpp
import numpy as np
from benchmark_utils import (
    check_prompts,
    engine_kwargs,
    load_benchmark_tokenizer,
    model_limits,
    random_prompts,
    sampleable_token_ids,
    write_json,
)

from vllm import LLM, EngineArgs, SamplingParams

PERCENTAGES = (10, 25, 50, 75, 90, 99)


def time_batches(run_batch: Callable[[], object], iters: int) -> list[float]:
    """Seconds per run of the whole batch, one entry per iteration."""
    latencies = []
    for _ in range(iters):
        start = time.perf_counter()
        run_batch()
        latencies.append(time.perf_counter() - start)
    return latencies


def warm_and_time(run_batch: Callable[[], object], args: argparse.Namespace):
    # Warm-up runs fill caches and allocator pools; they are not reported.
    time_batches(run_batch, args.num_iters_warmup)
    return time_batches(run_batch, args.num_iters)


def run_vllm(prompts: list[list[int]], args: argparse.Namespace) -> list[float]:
    params = SamplingParams(
        temperature=args.temperature,
        top_p=1.0,
        ignore_eos=True,
        max_tokens=args.output_len,
    )
    inputs = [{"prompt_token_ids": p} for p in prompts]
    llm = LLM(**engine_kwargs(args))
    try:
        return warm_and_time(lambda: llm.generate(inputs, params, use_tqdm=False), args)
    finally:
        llm.shutdown()


def run_llama_cpp(prompts: list[list[int]], args: argparse.Namespace) -> list[float]:
    max_len = args.input_len + args.output_len
    runner = backend_llama_cpp.make_runner(args, len(prompts), max_len)
    try:
        return warm_and_time(
            lambda: runner.generate(
                prompts, args.output_len, args.temperature, args.seed
            ),
            args,
        )
    finally:
        runner.close()


def report_limits(latencies: list[float], args: argparse.Namespace) -> dict:
    """Output tokens/s of the median run next to the batch-1 decode bound."""
    from benchmark_machine import (
        bandwidth_limit_tokens_per_s,
        copy_bandwidth_gbs,
        fp32_weight_bytes_per_token,
    )

    from vllm.transformers_utils.model_resolver import load_hf_config

    hf_config = load_hf_config(args.model)
    rate = args.batch_size * args.output_len / float(np.median(latencies))
    copy = copy_bandwidth_gbs()
    limit = bandwidth_limit_tokens_per_s(hf_config, copy)
    megabytes = fp32_weight_bytes_per_token(hf_config) / 1e6
    print(
        f"Output tokens/s (median run): {rate:.2f}; batch-1 decode bandwidth "
        f"limit: {limit:.2f} tokens/s ({megabytes:.1f} MB fp32 weights per "
        f"token / {copy:.2f} GB/s copy bandwidth measured now)"
    )
    return {
        "output_tokens_per_second": rate,
        "bandwidth_limit_tokens_per_second": limit,
        "copy_gbs": copy,
    }


def report(latencies: list[float], args: argparse.Namespace) -> None:
    values = np.array(latencies)
    percentiles = {p: float(np.percentile(values, p)) for p in PERCENTAGES}
    print(f"Avg latency: {values.mean()} seconds")
    for p, seconds in percentiles.items():
        print(f"{p}% percentile latency: {seconds} seconds")
    extra = report_limits(latencies, args) if args.report_limits else {}
    if args.output_json:
        write_json(
            args.output_json,
            {
                "avg_latency": float(values.mean()),
                "latencies": latencies,
                "percentiles": {str(p): s for p, s in percentiles.items()},
                **extra,
                "args": vars(args),
            },
        )


def main(args: argparse.Namespace) -> None:
    tokenizer = load_benchmark_tokenizer(args)
    vocab_size, max_len = model_limits(args)
    allowed = sampleable_token_ids(tokenizer, vocab_size)
    prompts = random_prompts(allowed, args.batch_size, args.input_len, args.seed)
    check_prompts(prompts, args.output_len, vocab_size, max_len)
    if args.backend == "llama.cpp":
        latencies = run_llama_cpp(prompts, args)
    else:
        latencies = run_vllm(prompts, args)
    report(latencies, args)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--backend", choices=["vllm", "llama.cpp"], default="vllm")
    add("--input-len", type=int, default=32)
    add("--output-len", type=int, default=128)
    add("--batch-size", type=int, default=8)
    add("--temperature", type=float, default=1.0, help="0 means greedy")
    add("--num-iters-warmup", type=int, default=10)
    add("--num-iters", type=int, default=30)
    add("--output-json", type=str, default=None)
    add(
        "--report-limits",
        action="store_true",
        help="also print output tokens/s and the batch-1 memory-bandwidth bound",
    )
    backend_llama_cpp.add_cli_args(parser)
    return EngineArgs.add_cli_args(parser)


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("input_len", "output_len", "batch_size", "num_iters"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.num_iters_warmup < 0:
        parser.error("--num-iters-warmup must be >= 0")
    one_rank = args.tensor_parallel_size * args.pipeline_parallel_size == 1
    if args.backend == "llama.cpp" and not one_rank:
        parser.error("--backend llama.cpp runs on one process: use -tp 1 -pp 1")


if __name__ == "__main__":
    _parser = make_parser()
    _args = _parser.parse_args()
    validate(_parser, _args)
    main(_args)
