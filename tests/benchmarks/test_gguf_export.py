"""The benchmarks' GGUF writer, checked without llama.cpp: what it writes reads
back through the engine's own GGUF loader as the checkpoint's weights."""

import os
import sys

import numpy as np
import pytest
import torch

BENCHMARKS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "benchmarks",
)
sys.path.insert(0, BENCHMARKS)

from gguf_export import (  # noqa: E402
    cached_gguf,
    iterate_safetensors,
    permute_qk,
    write_gguf,
)

from vllm.model_executor.model_loader.gguf_loader import (  # noqa: E402
    iterate_gguf_weights,
    read_field,
    unpermute_qk,
)


@pytest.mark.parametrize("head_dim,cols", [(8, 5), (64, 1)])
def test_permute_qk_is_the_loaders_inverse(head_dim, cols):
    w = np.random.default_rng(0).standard_normal((3 * head_dim, cols))
    permuted = permute_qk(w, 3)
    assert not np.array_equal(permuted, w)
    np.testing.assert_array_equal(unpermute_qk(permuted, 3), w)


@pytest.mark.parametrize("variant", ["llama_gqa", "llama_mha_tied"])
def test_f32_gguf_reads_back_as_the_safetensors_weights(tiny_model, tmp_path, variant):
    folder = tiny_model(variant)
    out = str(tmp_path / "model.f32.gguf")
    write_gguf(folder, out, "f32")
    expected = dict(iterate_safetensors(folder))
    got = dict(iterate_gguf_weights(out))
    assert set(got) == set(expected)
    for name, values in got.items():
        assert values.dtype == torch.float32
        assert torch.equal(values, torch.from_numpy(expected[name])), name


def test_f16_gguf_rounds_matrices_and_keeps_norms(tiny_model, tmp_path):
    folder = tiny_model("llama_gqa")
    out = str(tmp_path / "model.f16.gguf")
    write_gguf(folder, out, "f16")
    expected = dict(iterate_safetensors(folder))
    for name, values in iterate_gguf_weights(out):
        want = expected[name]
        if want.ndim > 1:
            want = want.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(values.numpy(), want, err_msg=name)


def test_metadata_describes_the_checkpoint(tiny_model, tmp_path):
    import gguf
    from transformers import AutoConfig, AutoTokenizer

    folder = tiny_model("llama_gqa")
    out = str(tmp_path / "model.gguf")
    write_gguf(folder, out, "f32")
    config = AutoConfig.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    reader = gguf.GGUFReader(out)
    assert read_field(reader, "general.architecture") == "llama"
    assert read_field(reader, "general.file_type") == 0
    assert read_field(reader, "llama.block_count") == config.num_hidden_layers
    assert read_field(reader, "llama.attention.head_count_kv") == 2
    assert read_field(reader, "llama.rope.dimension_count") == 16
    tokens = read_field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == config.vocab_size
    assert tokens == tokenizer.convert_ids_to_tokens(range(config.vocab_size))
    assert read_field(reader, "tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    # Special tokens are control tokens, so llama.cpp never splits text into them.
    types = read_field(reader, "tokenizer.ggml.token_type")
    assert types[tokenizer.eos_token_id] == gguf.TokenType.CONTROL
    assert types[200] == gguf.TokenType.NORMAL


def test_cached_gguf_is_written_once(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "cache"))
    folder = tiny_model("llama_mha_tied")
    first = cached_gguf(folder, "f16")
    assert first.startswith(str(tmp_path / "cache"))
    mtime = os.stat(first).st_mtime_ns
    assert cached_gguf(folder, "f16") == first
    assert os.stat(first).st_mtime_ns == mtime
    second = cached_gguf(folder, "f32")
    assert second != first
    # Written under a temporary name and renamed: nothing else is left behind.
    assert sorted(os.listdir(os.path.dirname(first))) == sorted(
        os.path.basename(p) for p in (first, second)
    )
