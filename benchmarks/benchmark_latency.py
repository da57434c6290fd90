"""Latency of one batch: the time from handing the engine ``--batch-size`` prompts
to having all their outputs, repeated ``--num-iters`` times after a warm-up.

    python benchmarks/benchmark_latency.py --input-len 32 --output-len 128 \
        --batch-size 8 --num-iters-warmup 2 --num-iters 10
"""

import argparse
import time

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


def time_batches(
    llm: LLM, prompts: list[list[int]], params: SamplingParams, iters: int
) -> list[float]:
    """Seconds per run of the whole batch, one entry per iteration."""
    inputs = [{"prompt_token_ids": p} for p in prompts]
    latencies = []
    for _ in range(iters):
        start = time.perf_counter()
        llm.generate(inputs, params, use_tqdm=False)
        latencies.append(time.perf_counter() - start)
    return latencies


def report(latencies: list[float], args: argparse.Namespace) -> None:
    values = np.array(latencies)
    percentiles = {p: float(np.percentile(values, p)) for p in PERCENTAGES}
    print(f"Avg latency: {values.mean()} seconds")
    for p, seconds in percentiles.items():
        print(f"{p}% percentile latency: {seconds} seconds")
    if args.output_json:
        write_json(
            args.output_json,
            {
                "avg_latency": float(values.mean()),
                "latencies": latencies,
                "percentiles": {str(p): s for p, s in percentiles.items()},
                "args": vars(args),
            },
        )


def main(args: argparse.Namespace) -> None:
    tokenizer = load_benchmark_tokenizer(args)
    vocab_size, max_len = model_limits(args)
    allowed = sampleable_token_ids(tokenizer, vocab_size)
    prompts = random_prompts(allowed, args.batch_size, args.input_len, args.seed)
    check_prompts(prompts, args.output_len, vocab_size, max_len)
    params = SamplingParams(
        temperature=args.temperature,
        top_p=1.0,
        ignore_eos=True,
        max_tokens=args.output_len,
    )
    llm = LLM(**engine_kwargs(args))
    try:
        # Warm-up runs fill caches and allocator pools; they are not reported.
        time_batches(llm, prompts, params, args.num_iters_warmup)
        latencies = time_batches(llm, prompts, params, args.num_iters)
    finally:
        llm.shutdown()
    report(latencies, args)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--input-len", type=int, default=32)
    add("--output-len", type=int, default=128)
    add("--batch-size", type=int, default=8)
    add("--temperature", type=float, default=1.0, help="0 means greedy")
    add("--num-iters-warmup", type=int, default=10)
    add("--num-iters", type=int, default=30)
    add("--output-json", type=str, default=None)
    return EngineArgs.add_cli_args(parser)


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("input_len", "output_len", "batch_size", "num_iters"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.num_iters_warmup < 0:
        parser.error("--num-iters-warmup must be >= 0")


if __name__ == "__main__":
    _parser = make_parser()
    _args = _parser.parse_args()
    validate(_parser, _args)
    main(_args)
