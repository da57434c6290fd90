"""Multi-LoRA end to end on one worker: mixed batches equal transformers + PEFT
and each request run alone, LRU eviction and reload, pinning, the adapter API,
prefix caching and preemption with adapters, and bad input refused by field."""

import json
import os
import shutil

import pytest

from tests.lora.utils import (
    MAX_TOKENS,
    MIXED_NAMES,
    check_mixed_batch,
    lora_requests,
    random_prompts,
    write_adapter,
)
from vllm import LLM, SamplingParams
from vllm.lora.request import LoRARequest

GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
ENGINE = dict(kv_cache_space=0.02, max_model_len=256, seed=0)


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model("llama_gqa")


@pytest.fixture(scope="module")
def adapters(tiny_adapters):
    return tiny_adapters("llama_gqa")


@pytest.fixture(scope="module")
def llm(model):
    # 16 blocks of 16 tokens cannot hold all eight requests: some are preempted.
    llm = LLM(
        model,
        enable_lora=True,
        max_loras=4,
        max_lora_rank=16,
        max_cpu_loras=4,
        num_gpu_blocks_override=16,
        **ENGINE,
    )
    yield llm
    llm.shutdown()


def _generate(llm, prompts, lora_request) -> list[list[int]]:
    outs = llm.generate(
        [{"prompt_token_ids": p} for p in prompts],
        GREEDY,
        use_tqdm=False,
        lora_request=lora_request,
    )
    return [o.outputs[0].token_ids for o in outs]


def test_mixed_batch_matches_peft_and_each_request_alone(llm, model, adapters):
    mixed = check_mixed_batch(llm, model, adapters)
    assert llm.llm_engine.scheduler.num_preemptions > 0
    requests = lora_requests(adapters)
    prompts = random_prompts(len(MIXED_NAMES))
    for prompt, name, tokens in zip(prompts, MIXED_NAMES, mixed):
        alone = _generate(llm, [prompt], requests.get(name))
        assert alone == [tokens], name
    assert llm.list_loras() == {1, 2, 3}


def test_lru_eviction_reload_and_pinning(model, adapters):
    """Two adapters fit in memory and one runs per step: a batch of three
    adapters runs one adapter at a time, and adapters are evicted and reloaded
    least recently used first, pinned ones kept, with the same tokens."""
    requests = lora_requests(adapters)
    prompts = random_prompts(3, seed=9)
    llm = LLM(model, enable_lora=True, max_loras=1, max_cpu_loras=2, **ENGINE)
    try:
        first = {
            name: _generate(llm, prompts, requests[name])
            for name in ("attn", "mlp", "all_rslora")
        }
        assert llm.list_loras() == {2, 3}  # attn (1) was evicted
        assert _generate(llm, prompts, requests["attn"]) == first["attn"]
        assert llm.list_loras() == {1, 3}
        assert llm.pin_lora(3)
        assert _generate(llm, prompts, requests["mlp"]) == first["mlp"]
        assert llm.list_loras() == {2, 3}  # 1 went, pinned 3 stayed
        assert _generate(llm, prompts, requests["attn"]) == first["attn"]
        assert llm.list_loras() == {1, 3}
        mixed = _generate(
            llm, prompts * 3, [requests[n] for n in first for _ in prompts]
        )
        assert mixed == [t for n in first for t in first[n]]
        assert llm.remove_lora(3) and llm.list_loras() <= {1, 2}
    finally:
        llm.shutdown()


def test_add_remove_and_list(model, adapters):
    requests = lora_requests(adapters)
    llm = LLM(model, enable_lora=True, max_loras=2, max_cpu_loras=3, **ENGINE)
    try:
        assert llm.list_loras() == set()
        assert llm.add_lora(requests["attn"]) is True
        assert llm.add_lora(requests["attn"]) is False  # already loaded
        assert llm.add_lora(requests["mlp"])
        assert llm.list_loras() == {1, 2}
        assert llm.remove_lora(1) is True
        assert llm.list_loras() == {2}
        with pytest.raises(ValueError, match="lora_id 1"):
            llm.remove_lora(1)  # removed already
        with pytest.raises(ValueError, match="lora_id 7"):
            llm.pin_lora(7)  # never added
        # The name of a removed adapter may take another id.
        renamed = LoRARequest("attn", 5, adapters["attn"])
        assert llm.add_lora(renamed)
        assert llm.list_loras() == {2, 5}
    finally:
        llm.shutdown()


def test_prefix_cache_is_not_shared_across_adapters(model, adapters):
    """The same long prompt under the base model and two adapters, twice: the
    second round hits the cache of its own adapter only."""
    from tests.lora.utils import peft_greedy

    requests = lora_requests(adapters)
    prompt = [(37 * i) % 1000 + 3 for i in range(40)]  # two full blocks
    names = [None, "attn", "mlp"]
    llm = LLM(
        model, enable_lora=True, max_loras=2, enable_prefix_caching=True, **ENGINE
    )
    try:
        rounds = [
            _generate(llm, [prompt] * 3, [requests.get(n) for n in names])
            for _ in range(2)
        ]
        stats = llm.llm_engine.scheduler.prefix_cache_stats
        assert stats.hits == 3 * 32  # second round: each its own two blocks
    finally:
        llm.shutdown()
    for name, first, second in zip(names, *rounds):
        want = peft_greedy(model, adapters.get(name), [prompt], MAX_TOKENS)[0]
        assert first == second == want, name


def _modules(worker) -> list[str]:
    return sorted({type(m).__name__ for m in worker.model_runner.model.modules()})


def test_no_lora_layers_without_enable_lora(model):
    llm = LLM(model, **ENGINE)
    try:
        names = llm.llm_engine.executor.collective_rpc(_modules)[0]
        assert "LoRALinear" not in names and "QKVParallelLinear" in names
        with pytest.raises(ValueError, match="lora_request .*enable_lora"):
            llm.generate(
                [{"prompt_token_ids": [5, 6]}],
                GREEDY,
                lora_request=LoRARequest("a", 1, "/x"),
            )
        with pytest.raises(ValueError, match="enable_lora"):
            llm.add_lora(LoRARequest("a", 1, "/x"))
        assert llm.list_loras() == set()
    finally:
        llm.shutdown()


def _bad_requests(adapters, model, tmp_path) -> dict[str, tuple[LoRARequest, str]]:
    """Case -> (request, what the error must name)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    no_module = tmp_path / "no_module"
    shutil.copytree(adapters["attn"], no_module)
    config_path = os.path.join(no_module, "adapter_config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["target_modules"] = ["q_proj", "lm_proj"]
    with open(config_path, "w") as f:
        json.dump(config, f)
    big = write_adapter(
        str(tmp_path / "big"), model, 4, r=32, lora_alpha=32, target_modules=["q_proj"]
    )
    return {
        "missing path": (LoRARequest("p", 11, str(tmp_path / "nowhere")), "lora_path"),
        "no path": (LoRARequest("p", 11), "lora_path"),
        "missing files": (LoRARequest("f", 12, str(empty)), "adapter_config.json"),
        "rank": (LoRARequest("r", 13, big), "max_lora_rank=16"),
        "target module": (LoRARequest("t", 14, str(no_module)), "target_modules"),
        "id < 1": (LoRARequest("i", 0, adapters["attn"]), "lora_int_id must be >= 1"),
        "name reused": (LoRARequest("attn", 15, adapters["mlp"]), "lora_name 'attn'"),
        "id reused": (LoRARequest("other", 1, adapters["mlp"]), "lora_int_id 1"),
    }


def test_bad_lora_requests_are_refused_and_the_engine_goes_on(
    llm, model, adapters, tmp_path
):
    requests = lora_requests(adapters)
    prompt = random_prompts(1, seed=4)[0]
    engine = llm.llm_engine
    engine.add_request("busy", {"prompt_token_ids": prompt}, GREEDY, requests["mlp"])
    engine.step()
    for case, (bad, field) in _bad_requests(adapters, model, tmp_path).items():
        with pytest.raises(ValueError, match=field):
            engine.add_request(f"bad {case}", {"prompt_token_ids": prompt}, GREEDY, bad)
        with pytest.raises(ValueError, match=field):
            engine.add_lora(bad)
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
    assert list(done) == ["busy"]
    assert done["busy"] == _generate(llm, [prompt], requests["mlp"])[0]
    assert engine.get_num_unfinished_requests() == 0
