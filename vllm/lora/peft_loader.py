"""Reads LoRA adapters in the PEFT folder format.

``inspect_adapter`` checks a folder against the model from adapter_config.json and
the safetensors header alone (names and shapes, no tensor data), so the engine
process can refuse a bad adapter without loading weights. ``load_adapter`` then
reads the tensors in a worker.

PEFT adds ``B @ A @ x * scaling`` to a projection's output, with scaling
``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with use_rslora); the scaling is folded
into B here. Per-module ranks (rank_pattern) come from the tensors' shapes.
"""

import json
import math
import os
import re
from dataclasses import dataclass

import torch

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

# base_model.model.<HF module path>.lora_A|lora_B[.<adapter name>].weight
_KEY = re.compile(r"^base_model\.model\.(.+)\.(lora_A|lora_B)(?:\.[^.]+)?\.weight$")

# Config switches that change the math this module implements: off or empty only.
_UNSUPPORTED = {
    "use_dora": "DoRA",
    "modules_to_save": "full copies of modules (modules_to_save)",
    "lora_bias": "LoRA biases",
    "alpha_pattern": "per-module alpha (alpha_pattern)",
    "fan_in_fan_out": "fan_in_fan_out (Conv1D models)",
    "layer_replication": "layer_replication",
    "trainable_token_indices": "trainable_token_indices",
}


@dataclass(frozen=True)
class AdapterModule:
    """One targeted projection: tensor names in the safetensors file."""

    a_key: str  # [r, in]
    b_key: str  # [out, r]
    rank: int
    scaling: float


def inspect_adapter(
    path: str,
    targets: dict[str, tuple[int, int]],  # HF module path -> (in, out) features
    max_rank: int,
) -> dict[str, AdapterModule]:
    """-> HF module path -> AdapterModule; ValueError naming the field for a
    missing folder or file, an unsupported option, a rank above max_rank, or a
    module the model does not have (or of another shape)."""
    config = _read_config(path)
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"{CONFIG_FILE} r must be a positive integer; got {rank!r}")
    if not isinstance(alpha, int | float):
        raise ValueError(f"{CONFIG_FILE} lora_alpha must be a number; got {alpha!r}")
    if rank > max_rank:
        raise ValueError(
            f"adapter rank r={rank} ({path}) exceeds max_lora_rank={max_rank}"
        )
    _check_target_names(config.get("target_modules"), targets)
    shapes = _read_header(path)
    modules = _pair_tensors(shapes, path)
    rslora = bool(config.get("use_rslora"))
    found = {}
    for module, (a_key, b_key) in modules.items():
        if module not in targets:
            raise ValueError(
                f"target module {module!r} of the adapter at {path} is not a LoRA "
                "target of this model"
            )
        r = _check_shapes(module, shapes[a_key], shapes[b_key], targets[module])
        if r > max_rank:
            raise ValueError(
                f"adapter rank {r} of {module} ({path}) exceeds max_lora_rank="
                f"{max_rank}"
            )
        scaling = alpha / (math.sqrt(r) if rslora else r)
        found[module] = AdapterModule(a_key, b_key, r, scaling)
    return found


def load_adapter(
    path: str,
    modules: dict[str, AdapterModule],
    dtype: torch.dtype,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """-> HF module path -> (A [r, in], B [out, r] times the scaling), full size."""
    from safetensors import safe_open

    out = {}
    with safe_open(os.path.join(path, WEIGHTS_FILE), framework="pt") as f:
        for module, m in modules.items():
            a = f.get_tensor(m.a_key).to(dtype)
            b = (f.get_tensor(m.b_key).float() * m.scaling).to(dtype)
            out[module] = (a, b)
    return out


def _read_config(path: str) -> dict:
    if not isinstance(path, str) or not path:
        raise ValueError("lora_path must name a folder holding a PEFT adapter")
    if not os.path.isdir(path):
        raise ValueError(f"lora_path {path!r} is not a directory")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not os.path.isfile(os.path.join(path, name)):
            raise ValueError(f"lora_path {path!r} has no {name}")
    try:
        with open(os.path.join(path, CONFIG_FILE)) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"lora_path {path!r}: unreadable {CONFIG_FILE}: {e}") from e
    if not isinstance(config, dict):
        raise ValueError(f"lora_path {path!r}: {CONFIG_FILE} is not a JSON object")
    peft_type = config.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise ValueError(f"{CONFIG_FILE} peft_type must be LORA; got {peft_type!r}")
    for key, what in _UNSUPPORTED.items():
        if config.get(key):
            raise ValueError(f"{CONFIG_FILE} {key}: {what} is not supported")
    if config.get("bias", "none") != "none":
        raise ValueError(f"{CONFIG_FILE} bias must be 'none'; got {config['bias']!r}")
    return config


def _check_target_names(names, targets: dict[str, tuple[int, int]]) -> None:
    """target_modules given as a list names projections (PEFT matches them as
    suffixes of module paths); a regex string is checked through the tensors."""
    if not isinstance(names, list):
        return
    known = sorted({t.rsplit(".", 1)[-1] for t in targets})
    for name in names:
        if not any(t == name or t.endswith(f".{name}") for t in targets):
            raise ValueError(
                f"target_modules: the model has no module {name!r}; LoRA can "
                f"target {known}"
            )


def _read_header(path: str) -> dict[str, list[int]]:
    """Tensor name -> shape, read from the safetensors header only."""
    from safetensors import safe_open

    file = os.path.join(path, WEIGHTS_FILE)
    try:
        with safe_open(file, framework="pt") as f:
            names = f.keys()
            return {k: list(f.get_slice(k).get_shape()) for k in names}
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"lora_path {path!r}: unreadable {WEIGHTS_FILE}: {e}") from e


def _pair_tensors(shapes: dict[str, list[int]], path: str) -> dict[str, tuple]:
    """HF module path -> (lora_A key, lora_B key)."""
    pairs: dict[str, dict[str, str]] = {}
    for key in shapes:
        match = _KEY.match(key)
        if match is None:
            raise ValueError(
                f"{WEIGHTS_FILE} at {path}: tensor {key!r} is not a LoRA A or B "
                "matrix (only LoRA weights are supported)"
            )
        pairs.setdefault(match.group(1), {})[match.group(2)] = key
    if not pairs:
        raise ValueError(f"{WEIGHTS_FILE} at {path} holds no LoRA weights")
    for module, pair in pairs.items():
        if len(pair) != 2:
            raise ValueError(
                f"{WEIGHTS_FILE} at {path}: {module} has lora_A or lora_B only"
            )
    return {m: (p["lora_A"], p["lora_B"]) for m, p in pairs.items()}


def _check_shapes(
    module: str, a: list[int], b: list[int], features: tuple[int, int]
) -> int:
    """-> the module's rank, if A is [r, in] and B is [out, r]."""
    in_features, out_features = features
    if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
        raise ValueError(f"LoRA tensors of {module} have shapes {a} and {b}")
    if a[1] != in_features or b[0] != out_features:
        raise ValueError(
            f"LoRA tensors of {module} are for a {a[1]} -> {b[0]} projection; the "
            f"model's is {in_features} -> {out_features}"
        )
    return a[0]
