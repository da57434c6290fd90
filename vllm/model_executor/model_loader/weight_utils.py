"""Find a checkpoint's weight files and stream its tensors by Hugging Face name."""

import glob
import json
import os
from collections.abc import Iterator

import torch

from vllm.config import CHECKPOINT_FORMATS
from vllm.model_executor.model_loader.gguf_loader import iterate_gguf_weights

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"


def find_safetensors_files(model_path: str) -> list[str]:
    """The safetensors files of a folder, in a stable order; [] when none.

    A shard index wins over a directory listing, because some repositories ship
    extra ``*.safetensors`` (e.g. a consolidated copy) that must not load twice.
    """
    index_path = os.path.join(model_path, SAFETENSORS_INDEX)
    if os.path.isfile(index_path):
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not os.path.isfile(os.path.join(model_path, s))]
        if missing:
            raise FileNotFoundError(
                f"{index_path} lists shards that are not in {model_path}: {missing}"
            )
        return [os.path.join(model_path, s) for s in shards]
    single = os.path.join(model_path, SAFETENSORS_SINGLE)
    if os.path.isfile(single):
        return [single]
    return sorted(glob.glob(os.path.join(model_path, "*.safetensors")))


def find_gguf_file(model_path: str) -> str | None:
    """The one ``*.gguf`` of a folder, None when there is none."""
    found = sorted(glob.glob(os.path.join(model_path, "*.gguf")))
    if len(found) > 1:
        names = [os.path.basename(p) for p in found]
        raise ValueError(
            f"{model_path} holds several GGUF files {names}; pass the path of the "
            "one to load"
        )
    return found[0] if found else None


def iterate_safetensors(files: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield tensors one by one, so only one is materialised at a time."""
    from safetensors import safe_open

    for path in files:
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                yield name, f.get_tensor(name)


def _missing_weights_error(model_path: str, load_format: str) -> Exception:
    expected = {
        "safetensors": f"{SAFETENSORS_SINGLE}, {SAFETENSORS_INDEX} with its "
        "shards, or any *.safetensors",
        "gguf": "a *.gguf file",
        "auto": "*.safetensors (single, or sharded with an index) or a *.gguf file",
    }[load_format]
    return FileNotFoundError(
        f"no weights for load_format={load_format!r} in {model_path!r}: "
        f"expected {expected}"
    )


def iterate_weights(
    model_path: str, load_format: str = "auto"
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (HF tensor name, CPU tensor) for every weight stored in a folder.

    Names are those of the checkpoint (``model.layers.0.self_attn.q_proj.weight``
    ...); a checkpoint with tied embeddings yields no ``lm_head.weight``.
    """
    if load_format not in CHECKPOINT_FORMATS:
        raise ValueError(
            f"unknown load_format {load_format!r}; expected one of {CHECKPOINT_FORMATS}"
        )
    if not os.path.isdir(model_path):
        raise FileNotFoundError(f"model folder {model_path!r} does not exist")
    if load_format in ("auto", "safetensors"):
        files = find_safetensors_files(model_path)
        if files:
            return iterate_safetensors(files)
    if load_format in ("auto", "gguf"):
        gguf_path = find_gguf_file(model_path)
        if gguf_path is not None:
            return iterate_gguf_weights(gguf_path)
    raise _missing_weights_error(model_path, load_format)
