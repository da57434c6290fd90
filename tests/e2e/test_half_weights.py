"""--dtype float16 on CPU: fp16 weight matrices, fp32 arithmetic.

Widening fp16 to fp32 is exact and the arithmetic is the fp32 path's, so the
engine on fp16 weights must produce exactly what it produces in fp32 on a
checkpoint whose matrices were rounded to fp16 beforehand: same tokens (greedy
and seeded) and the same logprobs, bit for bit.
"""

import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from vllm import LLM, SamplingParams


def rounded_copy(src: str, dst: str) -> str:
    """src with every matrix rounded to fp16 and stored back as fp32."""
    shutil.copytree(src, dst)
    for name in os.listdir(dst):
        if name.endswith(".safetensors"):
            path = os.path.join(dst, name)
            tensors = load_file(path)
            save_file(
                {
                    k: v.half().float() if v.dim() >= 2 else v
                    for k, v in tensors.items()
                },
                path,
                metadata={"format": "pt"},
            )
    return dst


def run(path: str, dtype: str, params: SamplingParams, prompts) -> list:
    llm = LLM(path, dtype=dtype, kv_cache_space=0.05, max_model_len=128, seed=0)
    try:
        mc = llm.llm_engine.config.model_config
        stored = torch.float16 if dtype == "float16" else torch.float32
        assert (mc.dtype, mc.weight_dtype or mc.dtype) == (torch.float32, stored)
        outs = llm.generate(prompts, params, use_tqdm=False)
    finally:
        llm.shutdown()
    return [
        (c.token_ids, [{t: lp.logprob for t, lp in row.items()} for row in c.logprobs])
        for o in outs
        for c in o.outputs
    ]


@pytest.mark.parametrize("variant", ["llama_mha_tied", "qwen2_bias"])
def test_fp16_weights_equal_fp32_on_rounded_weights(variant, tiny_model, tmp_path):
    path = tiny_model(variant)
    rounded = rounded_copy(path, str(tmp_path / "rounded"))
    prompts = [
        {"prompt_token_ids": [(7 * i + 3 * j) % 200 + 1 for j in range(5 + 9 * i)]}
        for i in range(4)
    ]
    for params in (
        SamplingParams(temperature=0.0, max_tokens=24, logprobs=3, ignore_eos=True),
        SamplingParams(
            temperature=0.9, seed=11, n=2, max_tokens=24, logprobs=2, ignore_eos=True
        ),
    ):
        half = run(path, "float16", params, prompts)
        assert half == run(rounded, "float32", params, prompts)
        # And the rounding is real: the fp32 original scores differently.
        assert half != run(path, "float32", params, prompts)
