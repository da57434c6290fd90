"""Helpers shared by the offline benchmarks: prompt building, engine kwargs, JSON."""

import argparse
import dataclasses
import json
import os
import random
from typing import Any

from vllm import EngineArgs
from vllm.transformers_utils.model_resolver import (
    load_hf_config,
    load_tokenizer,
    resolve_model,
)


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``LLM(**kwargs)`` from the parsed engine flags."""
    return dataclasses.asdict(EngineArgs.from_cli_args(args))


def load_benchmark_tokenizer(args: argparse.Namespace) -> Any:
    """The tokenizer the engine would use: --tokenizer if given, else the model's."""
    return load_tokenizer(args.tokenizer or args.model)


def model_limits(args: argparse.Namespace) -> tuple[int, int]:
    """(vocab size, max model len) of the checkpoint, read without an engine."""
    hf_config = load_hf_config(resolve_model(args.model))
    max_len = args.max_model_len or int(
        getattr(hf_config, "max_position_embeddings", 0) or 2048
    )
    return int(hf_config.vocab_size), max_len


def sampleable_token_ids(tokenizer: Any, vocab_size: int) -> list[int]:
    """Ids a random prompt may use: inside both the model's and the tokenizer's
    vocabulary, and no special or added token (they change how the model
    behaves, e.g. an EOS in the middle of a prompt)."""
    excluded = set(tokenizer.all_special_ids)
    excluded.update(tokenizer.get_added_vocab().values())
    limit = min(vocab_size, len(tokenizer))
    allowed = [i for i in range(limit) if i not in excluded]
    if not allowed:
        raise ValueError("the tokenizer leaves no ordinary token id to sample")
    return allowed


def random_prompts(
    allowed_ids: list[int], num_prompts: int, input_len: int, seed: int
) -> list[list[int]]:
    """``num_prompts`` prompts of exactly ``input_len`` ids drawn uniformly (with
    replacement) from ``allowed_ids``; the same seed gives the same prompts.
    Token ids are passed to the engine as-is, so no re-tokenisation can change
    the length."""
    if num_prompts < 1 or input_len < 1:
        raise ValueError("num_prompts and input_len must be >= 1")
    rng = random.Random(seed)
    return [rng.choices(allowed_ids, k=input_len) for _ in range(num_prompts)]


def dataset_prompts(path: str, tokenizer: Any, num_prompts: int) -> list[list[int]]:
    """Token ids of the first ``num_prompts`` prompts of a JSON file holding a
    list of strings or of ``{"prompt": str}`` objects."""
    with open(path, encoding="utf-8") as f:
        entries = json.load(f)
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty JSON list of prompts")
    prompts = []
    for i, entry in enumerate(entries[:num_prompts]):
        text = entry.get("prompt") if isinstance(entry, dict) else entry
        if not isinstance(text, str) or not text:
            raise ValueError(
                f"{path}: entry {i} must be a non-empty string or an object "
                'with a "prompt" string'
            )
        prompts.append(tokenizer.encode(text))
    return prompts


def check_prompts(
    prompts: list[list[int]], output_len: int, vocab_size: int, max_len: int
) -> None:
    """Fail early, with a clear message, on prompts the engine would reject or
    whose outputs it would shorten silently (token totals would then differ
    between backends)."""
    longest = max(len(p) for p in prompts)
    if longest + output_len > max_len:
        raise ValueError(
            f"longest prompt ({longest}) + output_len ({output_len}) exceeds "
            f"max_model_len ({max_len})"
        )
    top = max(max(p) for p in prompts)
    if top >= vocab_size:
        raise ValueError(
            f"the tokenizer produced id {top}, outside the model's vocabulary "
            f"of {vocab_size}: --tokenizer does not match --model"
        )


def write_json(path: str, results: dict[str, Any]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, default=str)
        f.write("\n")


def write_random_adapters(args: argparse.Namespace, out_dir: str) -> list[Any]:
    """``--num-loras`` PEFT adapters of rank ``--max-lora-rank`` on every
    projection of the model, with small random weights (seeded), in out_dir;
    -> a LoRARequest for each."""
    import torch
    from safetensors.torch import save_file

    from vllm.lora.request import LoRARequest
    from vllm.model_executor.models.registry import resolve_model_class

    mc = EngineArgs.from_cli_args(args).create_engine_config().model_config
    targets = resolve_model_class(mc.hf_config.architectures).lora_targets(mc)
    rank, gen = args.max_lora_rank, torch.Generator().manual_seed(args.seed)
    requests = []
    for i in range(args.num_loras):
        folder = os.path.join(out_dir, f"adapter-{i + 1}")
        os.makedirs(folder)
        tensors = {}
        for module, (fan_in, fan_out) in targets.items():
            prefix = f"base_model.model.{module}"
            tensors[f"{prefix}.lora_A.weight"] = (
                torch.randn(rank, fan_in, generator=gen) / fan_in**0.5
            )
            tensors[f"{prefix}.lora_B.weight"] = (
                torch.randn(fan_out, rank, generator=gen) * 0.01
            )
        save_file(tensors, os.path.join(folder, "adapter_model.safetensors"))
        names = sorted({m.rsplit(".", 1)[1] for m in targets})
        config = dict(peft_type="LORA", r=rank, lora_alpha=rank, target_modules=names)
        with open(os.path.join(folder, "adapter_config.json"), "w") as f:
            json.dump(config, f)
        requests.append(LoRARequest(f"adapter-{i + 1}", i + 1, folder))
    return requests
