"""Requests that the control-plane equality tests share."""

from typing import Any

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


def generate_tp_requests(llm: Any) -> dict[str, Any]:
    """Greedy and seeded tokens of ``tp_requests`` on ``llm`` (an LLM), and
    whether the engine preempted (it should, in 14 blocks of 16)."""
    prompts, greedy, seeded = tp_requests()
    out: dict[str, Any] = {
        name: [o.outputs[0].token_ids for o in llm.generate(prompts, params, False)]
        for name, params in (("greedy", greedy), ("seeded", seeded))
    }
    out["preempted"] = llm.llm_engine.scheduler.num_preemptions > 0
    return out
