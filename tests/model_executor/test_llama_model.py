"""The Llama model is built from ModelConfig: one rotary table for all layers,
sized to max_model_len, in the model's dtype."""

import pytest
import torch

from vllm import EngineArgs
from vllm.distributed.parallel_state import TensorParallelGroup
from vllm.model_executor.model_loader.loader import get_model


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_one_rotary_table_sized_to_max_model_len(tiny_model, dtype):
    args = EngineArgs(model=tiny_model("llama_gqa"), max_model_len=96, dtype=dtype)
    mc = args.create_engine_config().model_config
    model = get_model(mc, TensorParallelGroup())
    tables = {id(layer.self_attn.rotary_emb) for layer in model.model.layers}
    assert len(tables) == 1 and mc.num_layers > 1
    cache = model.model.layers[0].self_attn.rotary_emb.cos_sin_cache
    assert cache.shape == (96, mc.head_size)
    assert cache.dtype == mc.dtype == getattr(torch, dtype)
    attn = model.model.layers[0].self_attn
    assert attn.q_size == mc.num_attention_heads * mc.head_size
    assert attn.kv_size == mc.num_kv_heads * mc.head_size
