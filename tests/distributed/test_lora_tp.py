"""Multi-LoRA at TP=2 on every multi-process control plane: mixed batches equal
transformers + PEFT, adapter calls reach every rank (which all hold the same
adapters after LRU eviction), and under SPMD the engine process loads no adapter
weights."""

import gc

import pytest
import torch

from tests.conftest import use_control_plane
from tests.lora.utils import (
    check_mixed_batch,
    lora_requests,
    random_prompts,
)
from vllm import LLM, SamplingParams

PLANES = ["mp", "ray", "spmd_mp", "spmd_ray", "spmd_graph"]


@pytest.fixture(scope="module", autouse=True)
def shared_ray():
    """One Ray for the module: the backends join it instead of starting their own."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def _llm(monkeypatch, plane: str, model: str) -> LLM:
    backend = use_control_plane(monkeypatch, plane).backend
    # Three adapters, two per step and two in memory: the scheduler holds
    # requests back and the workers evict and reload.
    return LLM(
        model,
        tensor_parallel_size=2,
        distributed_executor_backend=backend,
        enable_lora=True,
        max_loras=2,
        max_cpu_loras=2,
        max_lora_rank=16,
        kv_cache_space=0.02,
        max_model_len=256,
    )


def _lora_tensor_shapes(adapters: dict[str, str]) -> set[tuple[int, ...]]:
    from safetensors import safe_open

    shapes = set()
    for folder in adapters.values():
        with safe_open(f"{folder}/adapter_model.safetensors", "pt") as f:
            names = f.keys()
            shapes |= {tuple(f.get_slice(k).get_shape()) for k in names}
    return shapes


def _engine_holds_no_adapter(llm: LLM, adapters: dict[str, str]) -> None:
    gc.collect()
    live = gc.get_objects()
    from vllm.lora.layers import LoRABatch, LoRALinear
    from vllm.lora.worker_manager import LoRAManager

    kinds = (LoRAManager, LoRALinear, LoRABatch)
    assert not [o for o in live if isinstance(o, kinds)]
    shapes = _lora_tensor_shapes(adapters)
    held = [
        tuple(o.shape)
        for o in live
        if isinstance(o, torch.Tensor) and tuple(o.shape) in shapes
    ]
    assert held == []


@pytest.mark.parametrize("plane", PLANES)
def test_tp2_multi_lora(monkeypatch, tiny_model, tiny_adapters, plane):
    model, adapters = tiny_model("llama_gqa"), tiny_adapters("llama_gqa")
    requests = lora_requests(adapters)
    llm = _llm(monkeypatch, plane, model)
    executor = llm.llm_engine.executor
    try:
        if plane.startswith("spmd"):
            prompt = {"prompt_token_ids": random_prompts(1)[0]}
            params = SamplingParams(max_tokens=4)
            for name in requests:
                llm.generate(prompt, params, False, lora_request=requests[name])
            _engine_holds_no_adapter(llm, adapters)
        got = check_mixed_batch(llm, model, adapters)
        by_rank = executor.collective_rpc("list_loras")
        assert by_rank[0] == by_rank[1] and len(by_rank[0]) == 2
        assert llm.list_loras() == set(by_rank[0])
        # Calls reach every rank; an evicted adapter reloads with equal tokens.
        assert llm.pin_lora(1)
        llm.remove_lora(2)
        by_rank = executor.collective_rpc("list_loras")
        assert by_rank[0] == by_rank[1] and 1 in by_rank[0] and 2 not in by_rank[0]
        assert check_mixed_batch(llm, model, adapters) == got
        by_rank = executor.collective_rpc("list_loras")
        assert by_rank[0] == by_rank[1] and 1 in by_rank[0]
    finally:
        llm.shutdown()
