"""Greedy tokens and top-5 logprobs equal Hugging Face transformers in fp32."""

import pytest
import torch

from tests.conftest import hf_greedy
from vllm import LLM, SamplingParams

SMOLLM2_PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea:",
    "def fibonacci(n):",
    "Explain why the sky is blue in one paragraph.",
    "1, 1, 2, 3, 5, 8,",
    "Translate to French: I would like a cup of coffee.",
    "Once upon a time, in a small village,",
    "List three uses of a paperclip:\n1.",
    "¿Dónde está la biblioteca? 日本語も話せますか?",
]


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    llm = LLM(smollm2_path, kv_cache_space=0.5, max_model_len=512, seed=0)
    yield llm
    llm.shutdown()


def test_smollm2_greedy_matches_hf(smollm2, smollm2_path):
    tokenizer = smollm2.get_tokenizer()
    prompts = [tokenizer.encode(p) for p in SMOLLM2_PROMPTS]
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    outs = smollm2.generate(
        [{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False
    )
    want, _ = hf_greedy(smollm2_path, prompts, 40)
    for out, expected in zip(outs, want):
        assert out.outputs[0].token_ids == expected


def test_smollm2_top5_logprobs_match_hf(smollm2, smollm2_path):
    tokenizer = smollm2.get_tokenizer()
    prompts = [tokenizer.encode(p) for p in SMOLLM2_PROMPTS[:3]]
    params = SamplingParams(temperature=0.0, max_tokens=12, logprobs=5, ignore_eos=True)
    outs = smollm2.generate(
        [{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False
    )
    want, rows = hf_greedy(smollm2_path, prompts, 12, top_logprobs=5)
    for out, expected, hf_rows in zip(outs, want, rows):
        completion = out.outputs[0]
        assert completion.token_ids == expected
        assert len(completion.logprobs) == len(expected)
        total = 0.0
        for token, ours, ref in zip(expected, completion.logprobs, hf_rows):
            top = torch.topk(ref, 5)
            assert token in ours
            for tok, value in zip(top.indices.tolist(), top.values.tolist()):
                assert abs(ours[tok].logprob - value) < 1e-3
                assert ours[tok].decoded_token == tokenizer.decode([tok])
            assert abs(ours[token].logprob - float(ref[token])) < 1e-3
            total += float(ref[token])
        assert completion.cumulative_logprob == pytest.approx(total, abs=1e-2)


@pytest.mark.parametrize(
    "variant", ["llama_gqa", "qwen2_bias", "llama_mha_tied", "llama3_rope", "mistral"]
)
def test_tiny_checkpoints_greedy_match_hf(tiny_model, variant):
    path = tiny_model(variant)
    gen = torch.Generator().manual_seed(7)
    prompts = [
        torch.randint(3, 1024, (n,), generator=gen).tolist() for n in (5, 17, 33)
    ]
    llm = LLM(path, kv_cache_space=0.05, max_model_len=256, block_size=16)
    params = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)
    outs = llm.generate(
        [{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False
    )
    llm.shutdown()
    want, _ = hf_greedy(path, prompts, 48)
    assert [o.outputs[0].token_ids for o in outs] == want


def test_prompt_logprobs_match_hf_forward(tiny_model):
    from transformers import AutoModelForCausalLM

    path = tiny_model("llama_gqa")
    prompt = list(range(10, 60))
    llm = LLM(path, kv_cache_space=0.05, max_model_len=256, max_num_batched_tokens=16)
    out = llm.generate(
        {"prompt_token_ids": prompt},
        SamplingParams(max_tokens=1, prompt_logprobs=3),
        use_tqdm=False,
    )[0]
    llm.shutdown()
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.inference_mode():
        ref = torch.log_softmax(hf(torch.tensor([prompt])).logits[0].float(), -1)
    assert out.prompt_logprobs[0] is None
    assert len(out.prompt_logprobs) == len(prompt)
    for pos in range(1, len(prompt)):
        entry = out.prompt_logprobs[pos]
        assert entry[prompt[pos]].logprob == pytest.approx(
            float(ref[pos - 1, prompt[pos]]), abs=1e-4
        )
        assert len(entry) >= 3
