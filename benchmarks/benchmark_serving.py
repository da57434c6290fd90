"""Online serving benchmark: N requests sent over HTTP to a running
OpenAI-compatible server, all at once or at a Poisson --request-rate.

    vllm serve &            # or python -m vllm.entrypoints.openai.api_server
    python benchmarks/benchmark_serving.py --dataset-name random \
        --random-input-len 128 --random-output-len 128 --num-prompts 64 \
        --ignore-eos --request-rate inf

Prompts are random token ids of exactly --random-input-len tokens (sent as ids,
so the server sees that exact length); with --ignore-eos each request yields
exactly --random-output-len tokens. Prints vLLM's result block: request and
token throughput, TTFT, TPOT (excluding the first token) and ITL.
"""

import argparse
import asyncio
import os
import random
import time
from datetime import datetime

import aiohttp
import numpy as np
from backend_request_func import (
    BACKENDS,
    TIMEOUT,
    RequestFuncInput,
    RequestFuncOutput,
    auth_headers,
    request_openai,
)
from benchmark_utils import random_prompts, sampleable_token_ids, write_json
from tqdm.asyncio import tqdm

from vllm.transformers_utils.model_resolver import (
    load_hf_config,
    load_tokenizer,
    resolve_model,
)

WIDTH = 50


def vocab_size(model: str, tokenizer) -> int:
    """The model's vocabulary when its config can be read here (a random
    prompt must stay inside it), else the tokenizer's."""
    try:
        return int(load_hf_config(resolve_model(model)).vocab_size)
    except Exception:
        return len(tokenizer)


def build_inputs(args: argparse.Namespace, model: str, tokenizer, vocab: int) -> list:
    """Random prompts of exact token length (a shared random prefix first when
    --random-prefix-len is set); lengths vary by --random-range-ratio."""
    rng = random.Random(args.seed)
    allowed = sampleable_token_ids(tokenizer, vocab)
    prefix = (
        random_prompts(allowed, 1, args.random_prefix_len, args.seed)[0]
        if (args.random_prefix_len)
        else []
    )
    ratio = args.random_range_ratio
    inputs = []
    for i in range(args.num_prompts):
        in_len = rng.randint(
            int(args.random_input_len * (1 - ratio)),
            int(args.random_input_len * (1 + ratio)),
        )
        out_len = rng.randint(
            max(1, int(args.random_output_len * (1 - ratio))),
            int(args.random_output_len * (1 + ratio)),
        )
        ids = prefix + random_prompts(allowed, 1, max(in_len, 1), args.seed + i)[0]
        prompt = tokenizer.decode(ids) if BACKENDS[args.backend][1] else ids
        inputs.append(
            RequestFuncInput(
                prompt=prompt,
                api_url=args.api_url,
                prompt_len=len(ids),
                output_len=out_len,
                model=model,
                ignore_eos=args.ignore_eos,
                temperature=args.temperature,
            )
        )
    return inputs


async def arrivals(n: int, rate: float, burstiness: float):
    """Yields request indices at Poisson (gamma, with burstiness) arrival
    times; all at once when rate is inf."""
    rng = np.random.default_rng(0)
    for i in range(n):
        yield i
        if rate != float("inf") and i + 1 < n:
            await asyncio.sleep(rng.gamma(burstiness, 1.0 / (rate * burstiness)))


async def run(args, inputs: list[RequestFuncInput]) -> tuple[list, float]:
    chat = BACKENDS[args.backend][1]
    limit = asyncio.Semaphore(args.max_concurrency or len(inputs))
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=TIMEOUT, connector=connector) as session:
        print("Starting initial single prompt test run...")
        test = await request_openai(inputs[0], session, chat)
        if not test.success:
            raise SystemExit(f"Initial test run failed: {test.error}")
        print("Initial test run completed. Starting main benchmark run...")
        print(f"Traffic request rate: {args.request_rate}")
        print(f"Burstiness factor: {args.burstiness}")
        print(f"Maximum request concurrency: {args.max_concurrency}")
        bar = None if args.disable_tqdm else tqdm(total=len(inputs))

        async def one(req: RequestFuncInput) -> RequestFuncOutput:
            async with limit:
                out = await request_openai(req, session, chat)
            if bar is not None:
                bar.update(1)
            return out

        start = time.perf_counter()
        tasks = []
        async for i in arrivals(len(inputs), args.request_rate, args.burstiness):
            tasks.append(asyncio.ensure_future(one(inputs[i])))
        outputs = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
        if bar is not None:
            bar.close()
    return outputs, duration


def summarize(outputs: list[RequestFuncOutput], duration: float, args) -> dict:
    ok = [o for o in outputs if o.success]
    ms = 1000.0
    ttfts = [o.ttft * ms for o in ok]
    tpots = [
        (o.latency - o.ttft) * ms / (o.output_tokens - 1)
        for o in ok
        if o.output_tokens > 1
    ]
    itls = [gap * ms for o in ok for gap in o.itl]
    e2els = [o.latency * ms for o in ok]
    total_in = sum(o.prompt_len for o in ok)
    total_out = sum(o.output_tokens for o in ok)
    result = {
        "completed": len(ok),
        "failed": len(outputs) - len(ok),
        "duration": duration,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration,
        "output_throughput": total_out / duration,
        "total_token_throughput": (total_in + total_out) / duration,
        "errors": [o.error for o in outputs if not o.success],
    }
    percentiles = [float(p) for p in args.metric_percentiles.split(",")]
    for name, values in (
        ("ttft", ttfts),
        ("tpot", tpots),
        ("itl", itls),
        ("e2el", e2els),
    ):
        arr = np.array(values or [0.0])
        result[f"mean_{name}_ms"] = float(arr.mean())
        result[f"median_{name}_ms"] = float(np.median(arr))
        result[f"std_{name}_ms"] = float(arr.std())
        for p in percentiles:
            result[f"p{p:g}_{name}_ms"] = float(np.percentile(arr, p))
    return result


def print_result(result: dict, args) -> None:
    def row(label: str, value, fmt: str = ".2f") -> None:
        print(f"{label:<40} {value:<10{fmt}}")

    print(" Serving Benchmark Result ".center(WIDTH, "="))
    row("Successful requests:", result["completed"], "")
    row("Failed requests:", result["failed"], "")
    if args.max_concurrency is not None:
        row("Maximum request concurrency:", args.max_concurrency, "")
    row("Benchmark duration (s):", result["duration"])
    row("Total input tokens:", result["total_input_tokens"], "")
    row("Total generated tokens:", result["total_output_tokens"], "")
    row("Request throughput (req/s):", result["request_throughput"])
    row("Output token throughput (tok/s):", result["output_throughput"])
    row("Total Token throughput (tok/s):", result["total_token_throughput"])
    sections = {
        "ttft": ("TTFT", "Time to First Token"),
        "tpot": ("TPOT", "Time per Output Token (excl. 1st token)"),
        "itl": ("ITL", "Inter-token Latency"),
        "e2el": ("E2EL", "End-to-end Latency"),
    }
    for name in args.percentile_metrics.split(","):
        short, title = sections[name]
        print(title.center(WIDTH, "-"))
        row(f"Mean {short} (ms):", result[f"mean_{name}_ms"])
        row(f"Median {short} (ms):", result[f"median_{name}_ms"])
        for p in args.metric_percentiles.split(","):
            row(f"P{float(p):g} {short} (ms):", result[f"p{float(p):g}_{name}_ms"])
    print("=" * WIDTH)
    for error in result["errors"][:5]:
        print(f"error: {error}")


async def served_model(base_url: str) -> tuple[str, str | None]:
    """The server's first model: (name, local path it was loaded from)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.get(f"{base_url}/v1/models", headers=auth_headers()) as response,
    ):
        body = await response.json()
        if response.status != 200:
            raise SystemExit(f"GET /v1/models: HTTP {response.status}: {body}")
        card = body["data"][0]
    return card["id"], card.get("root")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=sorted(BACKENDS), default="vllm")
    p.add_argument("--base-url", type=str, default=None)
    p.add_argument("--host", type=str, default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--endpoint", type=str, default=None)
    p.add_argument("--model", type=str, default=None, help="default: the server's")
    p.add_argument("--served-model-name", type=str, default=None)
    p.add_argument("--tokenizer", type=str, default=None)
    p.add_argument("--dataset-name", choices=["random"], default="random")
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--random-input-len", type=int, default=1024)
    p.add_argument("--random-output-len", type=int, default=128)
    p.add_argument("--random-range-ratio", type=float, default=0.0)
    p.add_argument("--random-prefix-len", type=int, default=0)
    p.add_argument("--request-rate", type=float, default=float("inf"))
    p.add_argument("--burstiness", type=float, default=1.0)
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--disable-tqdm", action="store_true")
    p.add_argument("--percentile-metrics", type=str, default="ttft,tpot,itl")
    p.add_argument("--metric-percentiles", type=str, default="99")
    p.add_argument("--save-result", action="store_true")
    p.add_argument("--result-dir", type=str, default=".")
    p.add_argument("--result-filename", type=str, default=None)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    base_url = args.base_url or f"http://{args.host}:{args.port}"
    args.api_url = base_url + (args.endpoint or BACKENDS[args.backend][0])
    name, root = asyncio.run(served_model(base_url))
    model = args.served_model_name or args.model or name
    local = args.model or root or name
    tokenizer = load_tokenizer(args.tokenizer or local)
    inputs = build_inputs(args, model, tokenizer, vocab_size(local, tokenizer))
    outputs, duration = asyncio.run(run(args, inputs))
    result = summarize(outputs, duration, args)
    print_result(result, args)
    if args.save_result:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        filename = (
            args.result_filename
            or f"{args.backend}-{args.request_rate}qps-{stamp}.json"
        )
        write_json(
            os.path.join(args.result_dir, filename),
            {**result, "date": stamp, "model_id": model, "args": vars(args)},
        )


if __name__ == "__main__":
    main()
