"""Write a Hugging Face Llama folder (config.json, tokenizer.json, *.safetensors) as
an unquantized GGUF that llama.cpp loads: the same weights the engine runs, for the
``--backend llama.cpp`` benchmarks.

    python benchmarks/gguf_export.py --dtype f16      # prints the cached file's path

F32 keeps every weight bit for bit; F16 rounds the matrices (norm weights stay F32,
as llama.cpp's own converter does). Files are cached under
``$VLLM_CACHE_ROOT/gguf`` and rewritten only when the source files change.
"""

import argparse
import glob
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np

from vllm import envs
from vllm.transformers_utils.model_resolver import DEFAULT_MODEL, resolve_model

# Bump when the written layout changes, so stale cached files are not reused.
WRITER_VERSION = 1
# --dtype -> (numpy dtype of the matrices, general.file_type)
DTYPES = {"f32": (np.float32, 0), "f16": (np.float16, 1)}
# llama.cpp picks its pre-tokenizer regex by this name; "smollm" is SmolLM2's.
DEFAULT_TOKENIZER_PRE = "smollm"


def permute_qk(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Hugging Face Q/K rows -> llama.cpp's order (inverse of the loader's
    ``unpermute_qk``): within each head, the two rotary halves become
    interleaved pairs.

    weight: [num_heads * head_dim, ...] (a projection weight or bias).
    """
    rows = weight.shape[0]
    head_dim = rows // num_heads
    if head_dim * num_heads != rows or head_dim % 2:
        raise ValueError(f"cannot split {rows} rows into {num_heads} rotary heads")
    split = weight.reshape(num_heads, 2, head_dim // 2, *weight.shape[1:])
    return split.swapaxes(1, 2).reshape(weight.shape)


def iterate_safetensors(folder: str) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, fp32 array) of every tensor in the folder's *.safetensors."""
    from safetensors import safe_open

    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"{folder} has no *.safetensors")
    for path in files:
        # torch, not numpy: numpy has no bf16 to read a bf16 checkpoint with.
        with safe_open(path, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                yield name, f.get_tensor(name).float().numpy()


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or "default"
    if rope_type != "default":
        raise ValueError(f"rope type {rope_type!r} is not written by this exporter")
    return float(params.get("rope_theta") or getattr(config, "rope_theta", 10000.0))


def _add_hparams(writer: Any, config: Any, file_type: int) -> None:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_name(os.path.basename(getattr(config, "_name_or_path", "")) or "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    if head_dim * heads != config.hidden_size:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)


def _token_table(tokenizer_json: dict, vocab_size: int) -> tuple[list, list]:
    """(token strings, token types) for ids 0..vocab_size-1 of a BPE tokenizer."""
    from gguf import TokenType

    tokens: dict[int, str] = {i: s for s, i in tokenizer_json["model"]["vocab"].items()}
    types = dict.fromkeys(tokens, TokenType.NORMAL)
    for added in tokenizer_json.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        special = added.get("special", False)
        types[added["id"]] = TokenType.CONTROL if special else TokenType.USER_DEFINED
    # Rows of the embedding that no token string names (a padded vocabulary).
    for i in range(vocab_size):
        if i not in tokens:
            tokens[i], types[i] = f"[PAD{i}]", TokenType.UNUSED
    ids = range(vocab_size)
    return [tokens[i] for i in ids], [types[i] for i in ids]


def _add_tokenizer(writer: Any, folder: str, config: Any, pre: str) -> None:
    from transformers import AutoTokenizer

    with open(os.path.join(folder, "tokenizer.json"), encoding="utf-8") as f:
        tokenizer_json = json.load(f)
    model = tokenizer_json["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"only BPE tokenizers are written, not {model.get('type')}")
    tokens, types = _token_table(tokenizer_json, config.vocab_size)
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(
        [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    )
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    for token_id, add in (
        (tok.bos_token_id, writer.add_bos_token_id),
        (tok.eos_token_id, writer.add_eos_token_id),
        (tok.unk_token_id, writer.add_unk_token_id),
        (tok.pad_token_id, writer.add_pad_token_id),
    ):
        if token_id is not None:
            add(token_id)
    writer.add_add_bos_token(bool(getattr(tok, "add_bos_token", False)))
    if getattr(tok, "chat_template", None):
        writer.add_chat_template(tok.chat_template)


def _gguf_tensors(
    folder: str, config: Any, dtype: np.dtype
) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, array in the file's dtype) of every weight, Q/K permuted."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, values in iterate_safetensors(folder):
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp reuses token_embd when output is absent
        if "rotary_emb" in hf_name:
            continue  # a buffer recomputed from rope_theta, not a weight
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no GGUF name for tensor {hf_name}")
        if ".q_proj." in hf_name:
            values = permute_qk(values, heads)
        elif ".k_proj." in hf_name:
            values = permute_qk(values, kv_heads)
        # 1-D tensors (norm weights, biases) stay fp32 in every file type.
        yield name, values.astype(dtype if values.ndim > 1 else np.float32)


def write_gguf(
    folder: str, out_path: str, dtype: str, tokenizer_pre: str = DEFAULT_TOKENIZER_PRE
) -> None:
    """Write the Llama checkpoint in ``folder`` to ``out_path`` as F32 or F16."""
    import gguf
    from transformers import AutoConfig

    np_dtype, file_type = DTYPES[dtype]
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    if config.model_type != "llama":
        raise ValueError(f"only llama checkpoints are written, not {config.model_type}")
    writer = gguf.GGUFWriter(out_path, "llama")
    _add_hparams(writer, config, file_type)
    _add_tokenizer(writer, folder, config, tokenizer_pre)
    for name, values in _gguf_tensors(folder, config, np_dtype):
        writer.add_tensor(name, np.ascontiguousarray(values))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def cached_gguf_path(folder: str, dtype: str) -> str:
    """Where the GGUF of ``folder`` in ``dtype`` is cached (written or not)."""
    parts = [str(WRITER_VERSION), dtype]
    for path in sorted(glob.glob(os.path.join(folder, "*"))):
        st = os.stat(path)
        parts.append(f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}")
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]
    stem = os.path.basename(os.path.normpath(folder))
    return os.path.join(envs.VLLM_CACHE_ROOT, "gguf", f"{stem}-{digest}.{dtype}.gguf")


def cached_gguf(model: str, dtype: str) -> str:
    """Path of the GGUF of ``model`` (anything the engine's ``--model`` takes),
    written on first use."""
    folder = resolve_model(model)
    final = cached_gguf_path(folder, dtype)
    if os.path.isfile(final):
        return final
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = f"{final}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        write_gguf(folder, tmp, dtype)
        os.replace(tmp, final)  # a file only ever appears complete
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return final


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    parser.add_argument("--output", help="write here instead of the cache")
    args = parser.parse_args()
    if args.output:
        write_gguf(resolve_model(args.model), args.output, args.dtype)
        print(args.output)
    else:
        print(cached_gguf(args.model, args.dtype))
