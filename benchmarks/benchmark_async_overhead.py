"""What driving LLMEngine from asyncio costs per step: AsyncLLMEngine's dedicated
engine thread against ``await asyncio.to_thread(engine.step)`` per step, both
against the plain synchronous loop, on one engine, runs interleaved.

    python benchmarks/benchmark_async_overhead.py [--num-requests 32] \
        [--output-len 128] [--repeats 3] [--model M --load-format dummy ...]

Without --model it uses a config-only 1-layer dummy Llama, so model compute is
small and the hand-off cost shows. Prints, per mode, the median wall time,
ms per step, process CPU seconds, and the extra ms per step over the sync loop.
"""

import argparse
import asyncio
import statistics
import tempfile
import time

import psutil

from vllm import EngineArgs, SamplingParams
from vllm.engine.async_llm_engine import AsyncLLMEngine
from vllm.transformers_utils.tiny_model import tiny_config, write_model_folder


def run_sync(engine, prompts, params, tag: str) -> int:
    for i, p in enumerate(prompts):
        engine.add_request(f"{tag}-{i}", {"prompt_token_ids": p}, params)
    steps = 0
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
    return steps


async def run_to_thread(engine, prompts, params, tag: str) -> None:
    queues: dict[str, asyncio.Queue] = {}
    for i, p in enumerate(prompts):  # on the loop: the engine is not stepping
        queues[f"{tag}-{i}"] = asyncio.Queue()
        engine.add_request(f"{tag}-{i}", {"prompt_token_ids": p}, params)

    async def consume(q: asyncio.Queue) -> None:
        while not (await q.get()).finished:
            pass

    async def step_loop() -> None:
        while engine.has_unfinished_requests():
            for out in await asyncio.to_thread(engine.step):
                queues[out.request_id].put_nowait(out)

    await asyncio.gather(step_loop(), *(consume(q) for q in queues.values()))


async def run_thread(async_engine, prompts, params, tag: str) -> None:
    async def consume(i: int, p: list[int]) -> None:
        request = {"prompt_token_ids": p}
        async for _ in async_engine.generate(request, params, f"{tag}-{i}"):
            pass

    await asyncio.gather(*(consume(i, p) for i, p in enumerate(prompts)))


def timed(fn, tag: str) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of fn(tag)."""
    proc = psutil.Process()
    cpu0, t0 = sum(proc.cpu_times()[:2]), time.perf_counter()
    fn(tag)
    return time.perf_counter() - t0, sum(proc.cpu_times()[:2]) - cpu0


def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="async-bench-model-") as folder:
        if args.model is None:
            write_model_folder(folder, tiny_config(num_hidden_layers=1))
            args.model, args.load_format = folder, "dummy"
        async_engine = AsyncLLMEngine.from_engine_args(EngineArgs.from_cli_args(args))
        engine = async_engine.engine
        prompts = [
            [(7 * i + j) % 900 + 10 for j in range(args.input_len)]
            for i in range(args.num_requests)
        ]
        params = SamplingParams(
            temperature=0.0, max_tokens=args.output_len, ignore_eos=True
        )
        steps = run_sync(engine, prompts, params, "warmup")
        modes = {
            "sync": lambda tag: run_sync(engine, prompts, params, tag),
            "to_thread": lambda tag: asyncio.run(
                run_to_thread(engine, prompts, params, tag)
            ),
            "thread": lambda tag: asyncio.run(
                run_thread(async_engine, prompts, params, tag)
            ),
        }
        results: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
        for r in range(args.repeats):
            for name, fn in modes.items():
                results[name].append(timed(fn, f"{name}{r}"))
        async_engine.shutdown()
    print(f"{args.num_requests} requests x {args.output_len} tokens, {steps} steps")
    print(f"{'mode':<10} {'wall s':>8} {'ms/step':>8} {'CPU s':>7} {'+ms/step':>9}")
    base = statistics.median(w for w, _ in results["sync"])
    for name, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        extra = (wall - base) * 1000 / steps
        print(
            f"{name:<10} {wall:>8.3f} {wall * 1000 / steps:>8.3f} {cpu:>7.2f} "
            f"{extra:>+9.3f}"
        )


if __name__ == "__main__":
    parser = EngineArgs.add_cli_args(argparse.ArgumentParser(description=__doc__))
    parser.set_defaults(model=None, kv_cache_space=0.25)
    parser.add_argument("--num-requests", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=16)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    main(parser.parse_args())
