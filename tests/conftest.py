"""Shared fixtures: tiny random Llama checkpoints written with transformers, the
bundled SmolLM2, and Hugging Face reference generation."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_VARIANTS = {
    # name: (config class name, overrides)
    "llama_gqa": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=2)),
    "llama_mha_tied": (
        "LlamaConfig",
        dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
    ),
    "qwen2_bias": ("Qwen2Config", dict(num_attention_heads=4, num_key_value_heads=2)),
    "llama_tp4": ("LlamaConfig", dict(num_attention_heads=8, num_key_value_heads=4)),
    # Enough layers to split into pipeline stages (uneven at 3).
    "llama_pp": (
        "LlamaConfig",
        dict(num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=5),
    ),
    # The tokenizer's whole vocabulary, so text and chat prompts are valid input.
    "llama_full_vocab": (
        "LlamaConfig",
        dict(num_attention_heads=4, num_key_value_heads=2, vocab_size=49152),
    ),
    # Llama 3.1-style frequency rescaling of the rotary embedding.
    "llama3_rope": (
        "LlamaConfig",
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
    ),
    "mistral": (
        "MistralConfig",
        dict(num_attention_heads=4, num_key_value_heads=1, sliding_window=None),
    ),
}


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    from vllm.transformers_utils.model_resolver import DEFAULT_MODEL, resolve_model

    return resolve_model(DEFAULT_MODEL)


def write_tiny_checkpoint(out_dir: str, variant: str) -> str:
    """A tiny random checkpoint of one TINY_VARIANTS entry, with tokenizer."""
    import transformers

    from vllm.transformers_utils.tiny_model import tiny_config, write_model_folder

    cls_name, overrides = TINY_VARIANTS[variant]
    config = tiny_config(cls_name, **overrides)
    write_model_folder(out_dir, config)
    torch.manual_seed(1234)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    # Random init gives near-uniform logits; sharpen them so greedy decoding is
    # far from ties and the comparison with HF is meaningful.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.mul_(8.0)
    model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, smollm2_path):
    """Factory: tiny_model(variant) -> folder of a tiny random checkpoint."""
    made: dict[str, str] = {}

    def make(variant: str = "llama_gqa") -> str:
        if variant not in made:
            out = str(tmp_path_factory.mktemp(variant))
            made[variant] = write_tiny_checkpoint(out, variant)
        return made[variant]

    return make


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model, tmp_path_factory):
    """Factory: tiny_adapters(variant) -> {name: folder} of random PEFT LoRA
    adapters for that tiny model (tests/lora/utils.py ADAPTERS)."""
    from tests.lora.utils import write_adapters

    made: dict[str, dict[str, str]] = {}

    def make(variant: str = "llama_gqa") -> dict[str, str]:
        if variant not in made:
            out = tmp_path_factory.mktemp(f"lora-{variant}")
            made[variant] = write_adapters(out, tiny_model(variant))
        return made[variant]

    return make


def hf_greedy(
    model_path: str,
    prompts: list[list[int]],
    max_new_tokens: int,
    top_logprobs: int = 0,
):
    """Greedy continuation of each prompt by transformers in fp32, EOS ignored.
    Returns (token ids per prompt, per-step log-softmax rows per prompt or None)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.eval()
    tokens, logprobs = [], []
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
                output_logits=bool(top_logprobs),
                return_dict_in_generate=True,
            )
            tokens.append(out.sequences[0, len(prompt) :].tolist())
            if top_logprobs:
                rows = [torch.log_softmax(s[0].float(), -1) for s in out.logits]
                logprobs.append(rows)
    return tokens, (logprobs if top_logprobs else None)


def use_control_plane(monkeypatch, name: str):
    """Sets the environment that selects control plane ``name`` (see
    vllm.executor.CONTROL_PLANES) for this test; returns the plane."""
    from vllm.executor import CONTROL_PLANES, control_plane_env

    for key, value in control_plane_env(name).items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    return CONTROL_PLANES[name]
