"""Prefix caching: prompts that share a prefix, generated with and without
``--enable-prefix-caching``, with the cache hit rate of each run.

    python benchmarks/benchmark_prefix_caching.py --num-prompts 64 \
        --prefix-len 512 --input-length-range 576:576 --output-len 64

Without ``--enable-prefix-caching``/``--no-enable-prefix-caching`` both settings
run, one after the other, and the speedup is printed; with either flag only that
one runs (as in vLLM's script). Every timed iteration draws fresh prompts (a new
prefix too), so a run never reuses blocks cached by the one before; an untimed
warm-up precedes them. Model loading and engine start-up are not timed.
"""

import argparse
import random
import time
from typing import Any

from benchmark_utils import (
    check_prompts,
    engine_kwargs,
    load_benchmark_tokenizer,
    model_limits,
    sampleable_token_ids,
    write_json,
)

from vllm import LLM, EngineArgs, SamplingParams


def sample_prompts(
    allowed_ids: list[int], args: argparse.Namespace, seed: int
) -> list[list[int]]:
    """``--num-prompts`` prompts: one shared prefix of ``--prefix-len`` tokens,
    then a distinct suffix, total length drawn in ``--input-length-range``;
    repeated ``--repeat-count`` times, shuffled (or sorted by length)."""
    rng = random.Random(seed)
    low, high = args.length_range
    prefix = rng.choices(allowed_ids, k=args.prefix_len)
    prompts = [
        prefix + rng.choices(allowed_ids, k=rng.randint(low, high) - args.prefix_len)
        for _ in range(args.num_prompts)
    ]
    prompts = prompts * args.repeat_count
    if args.sort:
        prompts.sort(key=len)
    else:
        rng.shuffle(prompts)
    return prompts


def run_setting(
    args: argparse.Namespace, caching: bool, prompt_sets: list[list[list[int]]]
) -> list[dict[str, Any]]:
    """One engine, one warm-up, then one timed generate() per prompt set."""
    kwargs = engine_kwargs(
        argparse.Namespace(**{**vars(args), "enable_prefix_caching": caching})
    )
    llm = LLM(**kwargs)
    params = SamplingParams(
        temperature=0.0, max_tokens=args.output_len, ignore_eos=True
    )
    stats = llm.llm_engine.scheduler.prefix_cache_stats
    runs = []
    try:
        warm = [[p[-1]] * 8 for p in prompt_sets[0][:2]]  # shares no full block
        llm.generate([{"prompt_token_ids": p} for p in warm], params, use_tqdm=False)
        for prompts in prompt_sets:
            queries, hits = stats.queries, stats.hits
            inputs = [{"prompt_token_ids": p} for p in prompts]
            start = time.perf_counter()
            outputs = llm.generate(inputs, params, use_tqdm=not args.disable_tqdm)
            elapsed = time.perf_counter() - start
            print(f"cost time {elapsed}")
            runs.append(
                dict(
                    elapsed=elapsed,
                    num_requests=len(outputs),
                    prompt_tokens=sum(len(p) for p in prompts),
                    output_tokens=sum(len(o.outputs[0].token_ids) for o in outputs),
                    cache_queries=stats.queries - queries,
                    cache_hits=stats.hits - hits,
                )
            )
    finally:
        llm.shutdown()
    return runs


def summarize(label: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Prints the run with the median time; returns it with every time."""
    run = sorted(runs, key=lambda r: r["elapsed"])[len(runs) // 2]
    t = max(run["elapsed"], 1e-9)
    total = run["prompt_tokens"] + run["output_tokens"]
    rate = run["cache_hits"] / run["cache_queries"] if run["cache_queries"] else 0.0
    print(f"[{label}] median of {len(runs)} run(s):")
    print(
        f"Throughput: {run['num_requests'] / t:.2f} requests/s, "
        f"{total / t:.2f} total tokens/s, "
        f"{run['output_tokens'] / t:.2f} output tokens/s"
    )
    print(
        f"Prefix cache hit rate: {100 * rate:.1f}% "
        f"({run['cache_hits']} of {run['cache_queries']} prompt tokens)"
    )
    return {**run, "hit_rate": rate, "all_elapsed": [r["elapsed"] for r in runs]}


def main(args: argparse.Namespace) -> None:
    tokenizer = load_benchmark_tokenizer(args)
    vocab_size, max_len = model_limits(args)
    allowed = sampleable_token_ids(tokenizer, vocab_size)
    prompt_sets = [
        sample_prompts(allowed, args, args.seed + i) for i in range(args.num_iters)
    ]
    lens = sorted(len(p) for p in prompt_sets[0])
    print(f"Sampled {len(lens)} requests.")
    print(f"Average input length: {sum(lens) / len(lens)}")
    print(f"P50 input length: {lens[len(lens) // 2]}")
    print(f"Min Prompt Length: {lens[0]}")
    print(f"Max Prompt Length: {lens[-1]}")
    for prompts in prompt_sets:
        check_prompts(prompts, args.output_len, vocab_size, max_len)
    settings = (
        [False, True]
        if args.enable_prefix_caching is None
        else [args.enable_prefix_caching]
    )
    results = {}
    for caching in settings:
        label = "prefix caching " + ("on" if caching else "off")
        print(f"------start generating ({label})------")
        results[label] = summarize(label, run_setting(args, caching, prompt_sets))
    if len(results) == 2:
        off, on = results["prefix caching off"], results["prefix caching on"]
        speedup = off["elapsed"] / max(on["elapsed"], 1e-9)
        print(f"Speedup with prefix caching: {speedup:.2f}x")
        results["speedup"] = speedup
    if args.output_json:
        write_json(args.output_json, {**results, "args": vars(args)})


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--num-prompts", type=int, default=64, help="distinct prompts")
    add("--repeat-count", type=int, default=1, help="times each prompt is sent")
    add("--sort", action="store_true", help="send prompts by length, not shuffled")
    add(
        "--input-length-range",
        type=str,
        default="576:576",
        help="min:max prompt length, prefix included",
    )
    add("--prefix-len", type=int, default=512, help="tokens every prompt shares")
    add("--output-len", type=int, default=64)
    add("--num-iters", type=int, default=1, help="timed runs per setting (median)")
    add("--output-json", type=str, default=None)
    add("--disable-tqdm", action="store_true")
    parser = EngineArgs.add_cli_args(parser)
    # Neither --enable-prefix-caching nor --no-enable-prefix-caching: run both.
    parser.set_defaults(enable_prefix_caching=None)
    return parser


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    try:
        low, high = (int(x) for x in args.input_length_range.split(":"))
    except ValueError:
        parser.error("--input-length-range must be min:max, e.g. 576:576")
    if not args.prefix_len <= low <= high or high < 1:
        parser.error("--input-length-range needs prefix-len <= min <= max, max >= 1")
    if args.prefix_len < 0 or args.output_len < 1 or args.num_prompts < 1:
        parser.error("--prefix-len >= 0, --output-len >= 1, --num-prompts >= 1")
    if args.repeat_count < 1 or args.num_iters < 1:
        parser.error("--repeat-count and --num-iters must be >= 1")
    args.length_range = (low, high)


if __name__ == "__main__":
    _parser = make_parser()
    _args = _parser.parse_args()
    validate(_parser, _args)
    main(_args)
