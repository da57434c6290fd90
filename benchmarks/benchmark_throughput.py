"""Offline throughput: how many requests and tokens per second a backend finishes
when it is handed every prompt at once.

    python benchmarks/benchmark_throughput.py --input-len 128 --output-len 128 \
        --num-prompts 64 [--backend hf --hf-max-batch-size 32 | --backend llama.cpp]
        [--enable-lora --num-loras 4 [--max-loras 4] --max-lora-rank 16]

With --num-loras N, N random LoRA adapters for the model are written to a temporary
folder and each prompt runs with one of them, picked at random (seeded).
--max-loras defaults to N here (the engine's own default, 1, would hold each
step to one adapter's requests and so to about 1/N of the batch); an explicit
--max-loras wins.

Only generation is timed; model loading and engine start-up are not.
"""

import argparse
import dataclasses
import os
import random
import tempfile
import time
from typing import Any

import backend_llama_cpp
import torch
from benchmark_utils import (
    check_prompts,
    dataset_prompts,
    engine_kwargs,
    load_benchmark_tokenizer,
    model_limits,
    random_prompts,
    sampleable_token_ids,
    write_json,
    write_random_adapters,
)

from vllm import EngineArgs


@dataclasses.dataclass
class RunResult:
    elapsed: float  # seconds spent generating
    num_requests: int
    prompt_tokens: int
    output_tokens: int


def run_vllm(
    prompts: list[list[int]], output_len: int, args: argparse.Namespace
) -> RunResult:
    from vllm import LLM, SamplingParams

    if args.enable_lora:
        print(f"LoRA: {args.num_loras} adapters, max_loras={args.max_loras}")
    llm = LLM(**engine_kwargs(args))
    adapters = tempfile.TemporaryDirectory(prefix="vllm-bench-lora-")
    try:
        loras = None
        if args.num_loras:
            choices = write_random_adapters(args, adapters.name)
            rng = random.Random(args.seed)
            loras = [rng.choice(choices) for _ in prompts]
        params = SamplingParams(
            temperature=args.temperature,
            top_p=1.0,
            ignore_eos=True,
            max_tokens=output_len,
        )
        inputs = [{"prompt_token_ids": p} for p in prompts]
        start = time.perf_counter()
        outputs = llm.generate(
            inputs, params, use_tqdm=not args.disable_tqdm, lora_request=loras
        )
        elapsed = time.perf_counter() - start
    finally:
        llm.shutdown()
        adapters.cleanup()
    prompt_tokens = sum(len(o.prompt_token_ids) for o in outputs)
    output_tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return RunResult(elapsed, len(outputs), prompt_tokens, output_tokens)


def load_hf_model(args: argparse.Namespace) -> Any:
    from transformers import AutoModelForCausalLM

    from vllm.config import resolve_dtype
    from vllm.transformers_utils.model_resolver import load_hf_config, resolve_model

    path = resolve_model(args.model)
    hf_config = load_hf_config(path)
    dtype = resolve_dtype(args.dtype, hf_config)[1]  # HF has one dtype: the weights'
    if args.load_format == "dummy":
        # Random weights from the config alone: no checkpoint needed, same cost.
        torch.manual_seed(args.seed)
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, local_files_only=True
        )
    return model.eval()


def left_pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [B, L], attention_mask [B, L]) with prompts aligned on the right,
    as generate() appends new tokens after the last column."""
    width = max(len(p) for p in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, prompt in enumerate(batch):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def hf_generate_kwargs(output_len: int, temperature: float, pad_id: int) -> dict:
    # min == max new tokens keeps EOS from ending a row early, so every request
    # yields exactly output_len tokens, as ignore_eos does on the vllm side.
    kwargs = dict(
        max_new_tokens=output_len,
        min_new_tokens=output_len,
        pad_token_id=pad_id,
    )
    if temperature > 0:
        # top_k=0 turns off transformers' default top-k 50, matching vllm's -1.
        kwargs.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
    else:
        kwargs.update(do_sample=False)
    return kwargs


def run_hf(
    prompts: list[list[int]], output_len: int, args: argparse.Namespace, pad_id: int
) -> RunResult:
    model = load_hf_model(args)
    kwargs = hf_generate_kwargs(output_len, args.temperature, pad_id)
    torch.manual_seed(args.seed)
    size = args.hf_max_batch_size
    output_tokens = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(prompts), size):
            batch = prompts[first : first + size]
            ids, mask = left_pad(batch, pad_id)
            out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            # Counted from what came back, not assumed, so a mismatch shows.
            output_tokens += (out.shape[1] - ids.shape[1]) * len(batch)
    elapsed = time.perf_counter() - start
    prompt_tokens = sum(len(p) for p in prompts)
    return RunResult(elapsed, len(prompts), prompt_tokens, output_tokens)


def run_llama_cpp(
    prompts: list[list[int]], output_len: int, args: argparse.Namespace
) -> RunResult:
    max_len = max(len(p) for p in prompts) + output_len
    runner = backend_llama_cpp.make_runner(args, len(prompts), max_len)
    try:
        start = time.perf_counter()
        outputs = runner.generate(prompts, output_len, args.temperature, args.seed)
        elapsed = time.perf_counter() - start
    finally:
        runner.close()
    prompt_tokens = sum(len(p) for p in prompts)
    output_tokens = sum(len(o) for o in outputs)
    return RunResult(elapsed, len(prompts), prompt_tokens, output_tokens)


def report_mfu(result: RunResult, args: argparse.Namespace) -> dict:
    """Model FLOP utilisation against a fp32 matmul measured right after the run."""
    from benchmark_machine import matmul_gflops, mfu, model_flops

    from vllm.transformers_utils.model_resolver import load_hf_config

    flops = model_flops(
        load_hf_config(args.model), result.prompt_tokens, result.output_tokens
    )
    torch.set_num_threads(os.cpu_count() or 1)
    rate = matmul_gflops(2048, 2048, 2048)
    achieved = flops / max(result.elapsed, 1e-9) / 1e9
    util = mfu(flops, max(result.elapsed, 1e-9), rate)
    print(
        f"MFU: {100 * util:.1f}% ({achieved:.1f} GFLOP/s of model matmuls / "
        f"{rate:.1f} GFLOP/s fp32 matmul 2048^3 measured now, "
        f"{torch.get_num_threads()} threads)"
    )
    return {"mfu": util, "model_gflops": achieved, "matmul_gflops": rate}


def report(result: RunResult, args: argparse.Namespace) -> None:
    total = result.prompt_tokens + result.output_tokens
    t = max(result.elapsed, 1e-9)
    print(
        f"Throughput: {result.num_requests / t:.2f} requests/s, "
        f"{total / t:.2f} total tokens/s, "
        f"{result.output_tokens / t:.2f} output tokens/s"
    )
    print(f"Total num prompt tokens:  {result.prompt_tokens}")
    print(f"Total num output tokens:  {result.output_tokens}")
    extra = report_mfu(result, args) if args.report_mfu else {}
    if args.output_json:
        write_json(
            args.output_json,
            {
                "elapsed_time": result.elapsed,
                "num_requests": result.num_requests,
                "total_num_tokens": total,
                "total_prompt_tokens": result.prompt_tokens,
                "total_output_tokens": result.output_tokens,
                "requests_per_second": result.num_requests / t,
                "tokens_per_second": total / t,
                "output_tokens_per_second": result.output_tokens / t,
                **extra,
                "args": vars(args),
            },
        )


def main(args: argparse.Namespace) -> None:
    tokenizer = load_benchmark_tokenizer(args)
    vocab_size, max_len = model_limits(args)
    if args.dataset:
        prompts = dataset_prompts(args.dataset, tokenizer, args.num_prompts)
    else:
        allowed = sampleable_token_ids(tokenizer, vocab_size)
        prompts = random_prompts(allowed, args.num_prompts, args.input_len, args.seed)
    check_prompts(prompts, args.output_len, vocab_size, max_len)
    if args.backend == "vllm":
        result = run_vllm(prompts, args.output_len, args)
    elif args.backend == "llama.cpp":
        result = run_llama_cpp(prompts, args.output_len, args)
    else:
        pad_id = tokenizer.pad_token_id
        pad_id = tokenizer.eos_token_id if pad_id is None else pad_id
        result = run_hf(prompts, args.output_len, args, pad_id or 0)
    report(result, args)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--backend", choices=["vllm", "hf", "llama.cpp"], default="vllm")
    add("--dataset", type=str, default=None, help="JSON list of prompts")
    add("--input-len", type=int, default=None, help="tokens per random prompt")
    add("--output-len", type=int, default=None, help="tokens per output")
    add("--num-prompts", type=int, default=1000)
    add("--temperature", type=float, default=1.0, help="0 means greedy")
    add("--hf-max-batch-size", type=int, default=None, help="hf backend only")
    add(
        "--num-loras",
        type=int,
        default=0,
        help="random LoRA adapters, one per prompt at random (needs --enable-lora)",
    )
    add("--output-json", type=str, default=None)
    add("--disable-tqdm", action="store_true")
    add(
        "--report-mfu",
        action="store_true",
        help="also print model FLOP utilisation against a fp32 matmul measured now",
    )
    backend_llama_cpp.add_cli_args(parser)
    parser = EngineArgs.add_cli_args(parser)
    # None: as many as --num-loras (set in validate), the engine's default without.
    parser.set_defaults(max_loras=None)
    return parser


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.output_len is None or args.output_len < 1:
        parser.error("--output-len >= 1 is required")
    if args.dataset is None and (args.input_len is None or args.input_len < 1):
        parser.error("--input-len >= 1 is required without --dataset")
    if args.dataset is not None and args.input_len is not None:
        parser.error("--input-len does not apply to --dataset prompts")
    if args.num_prompts < 1:
        parser.error("--num-prompts must be >= 1")
    if args.num_loras < 0 or (args.num_loras and not args.enable_lora):
        parser.error("--num-loras N >= 1 needs --enable-lora")
    if args.num_loras and args.backend != "vllm":
        parser.error("--num-loras applies to --backend vllm only")
    if args.max_loras is None:
        args.max_loras = args.num_loras or EngineArgs.max_loras
    if args.backend == "hf":
        if args.hf_max_batch_size is None or args.hf_max_batch_size < 1:
            parser.error("--backend hf needs --hf-max-batch-size >= 1")
        if args.tensor_parallel_size * args.pipeline_parallel_size != 1:
            parser.error("--backend hf runs on one process: use -tp 1 -pp 1")
    elif args.hf_max_batch_size is not None:
        parser.error("--hf-max-batch-size applies to --backend hf only")
    one_rank = args.tensor_parallel_size * args.pipeline_parallel_size == 1
    if args.backend == "llama.cpp" and not one_rank:
        parser.error("--backend llama.cpp runs on one process: use -tp 1 -pp 1")


if __name__ == "__main__":
    _parser = make_parser()
    _args = _parser.parse_args()
    validate(_parser, _args)
    main(_args)
