"""Requests that the control-plane equality tests share."""

import torch

from vllm import SamplingParams


def tp_requests() -> tuple[list[dict], SamplingParams, list[SamplingParams]]:
    """Six random prompts (9..60 tokens), one greedy setting and a seeded
    setting per prompt; 40 tokens each, so 14 blocks of 16 cannot hold them."""
    gen = torch.Generator().manual_seed(3)
    prompts = [
        {"prompt_token_ids": torch.randint(3, 1000, (n,), generator=gen).tolist()}
        for n in (9, 30, 47, 21, 60, 14)
    ]
    greedy = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    seeded = [
        SamplingParams(
            temperature=0.9, top_p=0.9, seed=i, max_tokens=40, ignore_eos=True
        )
        for i in range(len(prompts))
    ]
    return prompts, greedy, seeded
