"""Weight iteration over safetensors (single, sharded) and GGUF checkpoints."""

import json
import os

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from vllm.model_executor.model_loader.gguf_loader import (
    gguf_to_hf_name,
    iterate_gguf_weights,
    unpermute_qk,
)
from vllm.model_executor.model_loader.weight_utils import iterate_weights

NUM_HEADS, NUM_KV_HEADS, HIDDEN = 4, 2, 32


def _tiny_llama(tied: bool) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        vocab_size=128,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(config).eval()


def _expected_state(model: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    state = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        # Tied checkpoints store only the embedding.
        state.pop("lm_head.weight")
    return state


def _assert_same(yielded: list[tuple[str, torch.Tensor]], expected: dict) -> None:
    names = [name for name, _ in yielded]
    assert len(names) == len(set(names)), "a tensor was yielded twice"
    assert set(names) == set(expected)
    for name, tensor in yielded:
        assert tensor.device.type == "cpu"
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0)


@pytest.mark.parametrize("tied", [False, True])
def test_single_safetensors(tmp_path, tied):
    model = _tiny_llama(tied)
    model.save_pretrained(tmp_path)
    assert os.path.isfile(tmp_path / "model.safetensors")
    expected = _expected_state(model)
    assert ("lm_head.weight" in expected) != tied
    for load_format in ("auto", "safetensors"):
        _assert_same(list(iterate_weights(str(tmp_path), load_format)), expected)


@pytest.mark.parametrize("tied", [False, True])
def test_sharded_safetensors(tmp_path, tied):
    model = _tiny_llama(tied)
    model.save_pretrained(tmp_path, max_shard_size="50KB")
    with open(tmp_path / "model.safetensors.index.json") as f:
        shards = set(json.load(f)["weight_map"].values())
    assert len(shards) > 1
    # A stray extra file must not be read when an index names the shards.
    os.link(tmp_path / sorted(shards)[0], tmp_path / "consolidated.safetensors")
    _assert_same(list(iterate_weights(str(tmp_path))), _expected_state(model))


def test_unnamed_safetensors_file(tmp_path):
    model = _tiny_llama(tied=False)
    model.save_pretrained(tmp_path)
    os.rename(tmp_path / "model.safetensors", tmp_path / "weights.safetensors")
    got = list(iterate_weights(str(tmp_path), "safetensors"))
    _assert_same(got, _expected_state(model))


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's convert script: pair up row i of the first rotary half with
    # row i of the second half, per head.
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def test_unpermute_qk_inverts_llama_cpp():
    w = np.arange(8 * 6 * 3, dtype=np.float32).reshape(8 * 6, 3)
    permuted = _llama_cpp_permute(w, n_head=6)
    assert not np.array_equal(permuted, w)
    np.testing.assert_array_equal(unpermute_qk(permuted, 6), w)
    bias = np.arange(16, dtype=np.float32)
    np.testing.assert_array_equal(unpermute_qk(_llama_cpp_permute(bias, 2), 2), bias)


def test_gguf_name_mapping():
    assert gguf_to_hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert gguf_to_hf_name("output.weight") == "lm_head.weight"
    assert gguf_to_hf_name("output_norm.weight") == "model.norm.weight"
    assert (
        gguf_to_hf_name("blk.12.ffn_down.weight")
        == "model.layers.12.mlp.down_proj.weight"
    )
    assert (
        gguf_to_hf_name("blk.0.attn_norm.weight")
        == "model.layers.0.input_layernorm.weight"
    )
    assert gguf_to_hf_name("rope_freqs.weight") is None


_HF_TO_GGUF_PART = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _write_tiny_gguf(path: str, state: dict[str, torch.Tensor]) -> None:
    """Write an F32 GGUF the way llama.cpp lays out a llama checkpoint."""
    import gguf

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(2)
    writer.add_head_count(NUM_HEADS)
    writer.add_head_count_kv(NUM_KV_HEADS)
    writer.add_embedding_length(HIDDEN)
    globals_ = {"model.embed_tokens": "token_embd", "model.norm": "output_norm"}
    globals_["lm_head"] = "output"
    for hf_name, tensor in state.items():
        stem, kind = hf_name.rsplit(".", 1)
        array = tensor.numpy()
        if stem in globals_:
            writer.add_tensor(f"{globals_[stem]}.{kind}", array)
            continue
        _, _, layer, part = stem.split(".", 3)
        if part == "self_attn.q_proj":
            array = _llama_cpp_permute(array, NUM_HEADS)
        elif part == "self_attn.k_proj":
            array = _llama_cpp_permute(array, NUM_KV_HEADS)
        writer.add_tensor(f"blk.{layer}.{_HF_TO_GGUF_PART[part]}.{kind}", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_round_trip(tmp_path):
    model = _tiny_llama(tied=False)
    expected = _expected_state(model)
    path = str(tmp_path / "tiny.gguf")
    _write_tiny_gguf(path, expected)
    _assert_same(list(iterate_gguf_weights(path)), expected)
    # Through the folder-level API as well.
    _assert_same(list(iterate_weights(str(tmp_path), "gguf")), expected)
    _assert_same(list(iterate_weights(str(tmp_path), "auto")), expected)


def test_missing_folder(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        iterate_weights(missing, "auto")


def test_folder_without_weights(tmp_path):
    _tiny_llama(tied=False).config.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        iterate_weights(str(tmp_path), "auto")
    assert str(tmp_path) in str(err.value)
    assert "safetensors" in str(err.value) and "gguf" in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"\*\.gguf"):
        iterate_weights(str(tmp_path), "gguf")


def test_gguf_format_ignores_safetensors(tmp_path):
    _tiny_llama(tied=False).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="gguf"):
        iterate_weights(str(tmp_path), "gguf")


def test_unknown_load_format(tmp_path):
    with pytest.raises(ValueError, match="load_format"):
        iterate_weights(str(tmp_path), "pt")
