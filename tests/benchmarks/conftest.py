"""Fixtures shared by the benchmark smoke tests."""

import os
import shutil

import pytest


@pytest.fixture(scope="module")
def tiny_dummy_model(tmp_path_factory, smollm2_path) -> str:
    """A config-only tiny Llama folder (weights come from --load-format dummy)."""
    from transformers import LlamaConfig

    out = tmp_path_factory.mktemp("tiny_bench_model")
    LlamaConfig(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        architectures=["LlamaForCausalLM"],
    ).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(smollm2_path, name), out)
    return str(out)
