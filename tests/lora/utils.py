"""Tiny random LoRA adapters written by PEFT, and PEFT's greedy reference
(the ``tiny_adapters`` fixture in tests/conftest.py writes them)."""

import torch

from vllm.lora.request import LoRARequest

# Three adapters that differ in rank, alpha, scaling rule and target modules.
ADAPTERS = {
    "attn": dict(
        r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
    ),
    "mlp": dict(
        r=4, lora_alpha=8, target_modules=["gate_proj", "up_proj", "down_proj"]
    ),
    "all_rslora": dict(
        r=16,
        lora_alpha=8,
        use_rslora=True,
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
    ),
}


def write_adapters(out_dir, model_path: str) -> dict[str, str]:
    """ADAPTERS for the model at model_path, in sub-folders of out_dir."""
    return {
        name: write_adapter(str(out_dir / name), model_path, i + 1, **cfg)
        for i, (name, cfg) in enumerate(ADAPTERS.items())
    }


def write_adapter(out_dir: str, model_path: str, seed: int, **lora_config) -> str:
    """A PEFT adapter for the model at model_path, with random A and B. PEFT
    starts B at zero (the adapter then changes nothing); random B makes it
    change the outputs."""
    import peft
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    config = peft.LoraConfig(lora_dropout=0.0, **lora_config)
    model = peft.get_peft_model(base, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    model.save_pretrained(out_dir)
    return out_dir


_REFERENCE: dict[tuple, list[int]] = {}


def peft_greedy(
    model_path: str, adapter: str | None, prompts: list[list[int]], max_new_tokens: int
) -> list[list[int]]:
    """Greedy continuations by transformers (plus PEFT's adapter, if given),
    remembered for the session."""
    keys = [(model_path, adapter, tuple(p), max_new_tokens) for p in prompts]
    missing = [p for p, k in zip(prompts, keys) if k not in _REFERENCE]
    if missing:
        for p, out in zip(
            missing, _peft_greedy(model_path, adapter, missing, max_new_tokens)
        ):
            _REFERENCE[(model_path, adapter, tuple(p), max_new_tokens)] = out
    return [_REFERENCE[k] for k in keys]


def _peft_greedy(
    model_path: str, adapter: str | None, prompts: list[list[int]], max_new_tokens: int
) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    out = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            seq = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
            out.append(seq[0, len(prompt) :].tolist())
    return out


def random_prompts(num: int, seed: int = 5) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 40, (num,), generator=gen).tolist()
    return [torch.randint(3, 1024, (n,), generator=gen).tolist() for n in lengths]


def lora_requests(adapters: dict[str, str]) -> dict[str, LoRARequest]:
    """One LoRARequest per adapter folder, ids 1, 2, 3 in ADAPTERS order."""
    return {
        name: LoRARequest(name, i + 1, adapters[name])
        for i, name in enumerate(ADAPTERS)
    }


# Four requests per kind: the base model and each adapter, interleaved.
MIXED_NAMES = [None, "attn", "mlp", "all_rslora"] * 2
MAX_TOKENS = 16


def check_mixed_batch(llm, model_path: str, adapters: dict[str, str]) -> list:
    """Generates MIXED_NAMES' prompts in one batch; asserts greedy tokens equal
    transformers + PEFT for each, and that every adapter changes the output.
    -> the tokens, per prompt."""
    from vllm import SamplingParams

    prompts = random_prompts(len(MIXED_NAMES))
    requests = lora_requests(adapters)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outs = llm.generate(
        [{"prompt_token_ids": p} for p in prompts],
        params,
        use_tqdm=False,
        lora_request=[requests.get(n) for n in MIXED_NAMES],
    )
    got = [o.outputs[0].token_ids for o in outs]
    assert [o.lora_request for o in outs] == [requests.get(n) for n in MIXED_NAMES]
    base = peft_greedy(model_path, None, prompts, MAX_TOKENS)
    for prompt, name, tokens, base_tokens in zip(prompts, MIXED_NAMES, got, base):
        folder = adapters.get(name)
        assert tokens == peft_greedy(model_path, folder, [prompt], MAX_TOKENS)[0], name
        if name is not None:
            assert tokens != base_tokens, f"adapter {name} changed nothing"
    return got
