"""PEFT folders: what is read (ranks, PEFT's scaling) and every way a folder is
refused, each a ValueError naming the field, from config and header alone."""

import json
import math
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from vllm import EngineArgs
from vllm.lora.peft_loader import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    inspect_adapter,
    load_adapter,
)
from vllm.model_executor.models.llama import LlamaForCausalLM


@pytest.fixture(scope="module")
def targets(tiny_model):
    mc = EngineArgs(model=tiny_model("llama_gqa")).create_engine_config().model_config
    return LlamaForCausalLM.lora_targets(mc)


@pytest.fixture(scope="module")
def adapters(tiny_adapters):
    return tiny_adapters("llama_gqa")


def _copy(src: str, dst, config_changes: dict | None = None) -> str:
    out = str(dst / "adapter")
    shutil.copytree(src, out)
    if config_changes:
        path = os.path.join(out, CONFIG_FILE)
        with open(path) as f:
            config = json.load(f)
        config.update(config_changes)
        with open(path, "w") as f:
            json.dump(config, f)
    return out


def test_ranks_targets_and_scaling(adapters, targets):
    attn = inspect_adapter(adapters["attn"], targets, 16)
    assert sorted({m.rsplit(".", 1)[1] for m in attn}) == [
        "k_proj",
        "o_proj",
        "q_proj",
        "v_proj",
    ]
    assert all(m.rank == 8 and m.scaling == 16 / 8 for m in attn.values())
    rs = inspect_adapter(adapters["all_rslora"], targets, 16)
    assert len(rs) == 7 * 2  # 7 projections in each of 2 layers
    assert all(m.scaling == pytest.approx(8 / math.sqrt(16)) for m in rs.values())


def test_load_folds_scaling_into_b(adapters, targets):
    modules = inspect_adapter(adapters["mlp"], targets, 16)
    loaded = load_adapter(adapters["mlp"], modules, torch.float32)
    raw = load_file(os.path.join(adapters["mlp"], WEIGHTS_FILE))
    module = "model.layers.1.mlp.down_proj"
    a, b = loaded[module]
    prefix = f"base_model.model.{module}"
    torch.testing.assert_close(a, raw[f"{prefix}.lora_A.weight"])
    torch.testing.assert_close(b, raw[f"{prefix}.lora_B.weight"] * (8 / 4))


def test_missing_folder_or_files(adapters, targets, tmp_path):
    with pytest.raises(ValueError, match="lora_path"):
        inspect_adapter(str(tmp_path / "nowhere"), targets, 16)
    with pytest.raises(ValueError, match="lora_path"):
        inspect_adapter("", targets, 16)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        folder = tmp_path / name.split(".")[0]
        shutil.copytree(adapters["attn"], folder)
        os.remove(folder / name)
        with pytest.raises(ValueError, match=f"lora_path .* has no {name}"):
            inspect_adapter(str(folder), targets, 16)


def test_rank_above_max_lora_rank(adapters, targets):
    with pytest.raises(ValueError, match="max_lora_rank=8"):
        inspect_adapter(adapters["all_rslora"], targets, 8)


def test_rank_pattern_rank_is_checked_per_module(adapters, targets, tmp_path):
    """Config r may be small while a module's tensors are larger."""
    folder = _copy(adapters["all_rslora"], tmp_path, {"r": 4})
    with pytest.raises(ValueError, match="max_lora_rank=8"):
        inspect_adapter(folder, targets, 8)


def test_target_module_the_model_lacks(adapters, targets, tmp_path):
    folder = _copy(adapters["attn"], tmp_path, {"target_modules": ["q_proj", "fc1"]})
    with pytest.raises(
        ValueError, match="target_modules: the model has no module 'fc1'"
    ):
        inspect_adapter(folder, targets, 16)


def test_tensor_for_a_layer_the_model_lacks(adapters, targets, tmp_path):
    folder = _copy(adapters["mlp"], tmp_path)
    file = os.path.join(folder, WEIGHTS_FILE)
    tensors = load_file(file)
    extra = {k.replace("layers.1.", "layers.9."): v.clone() for k, v in tensors.items()}
    save_file({**tensors, **extra}, file)
    with pytest.raises(ValueError, match="target module 'model.layers.9.mlp"):
        inspect_adapter(folder, targets, 16)


def test_tensor_of_the_wrong_shape(adapters, targets, tmp_path):
    folder = _copy(adapters["mlp"], tmp_path)
    file = os.path.join(folder, WEIGHTS_FILE)
    tensors = load_file(file)
    key = "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"
    tensors[key] = torch.zeros(4, 32)
    save_file(tensors, file)
    with pytest.raises(ValueError, match="up_proj are for a 32 -> 128 projection"):
        inspect_adapter(folder, targets, 16)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"use_dora": True}, "use_dora"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"bias": "all"}, "bias"),
        ({"peft_type": "IA3"}, "peft_type"),
        ({"r": 0}, "r must be"),
    ],
)
def test_unsupported_options(adapters, targets, tmp_path, changes, field):
    folder = _copy(adapters["attn"], tmp_path, changes)
    with pytest.raises(ValueError, match=field):
        inspect_adapter(folder, targets, 16)
