"""Tensor parallelism on the legacy driver-worker executors (mp and Ray).

Greedy tokens equal TP=1 and Hugging Face transformers exactly, seeded sampling
equals TP=1, the KV cache is sized for the rank holding the most KV heads, and every
rank pins its torch thread count. One engine per case, shared by the module's tests.
"""

import os

import pytest
import torch
from transformers import AutoConfig

from tests.conftest import hf_greedy
from vllm import LLM, SamplingParams, envs

CASES = {
    # id: (backend, model: a tiny_model variant or "smollm2", TP size)
    "mp-tiny-tp2": ("mp", "llama_tp4", 2),
    "mp-tiny-tp4": ("mp", "llama_tp4", 4),
    # 2 KV heads over 4 ranks: each KV head is replicated on two ranks.
    "mp-gqa-tp4": ("mp", "llama_gqa", 4),
    "mp-smollm2-tp3": ("mp", "smollm2", 3),
    "ray-tiny-tp2": ("ray", "llama_tp4", 2),
    "ray-tiny-tp4": ("ray", "llama_tp4", 4),
    "ray-smollm2-tp3": ("ray", "smollm2", 3),
}
# Cases whose workers get an explicit VLLM_CPU_NUM_THREADS (the rest the default).
PINNED = ("mp-tiny-tp2", "ray-tiny-tp2")

SMOLLM2_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
]
ENGINE_KWARGS = {
    "smollm2": dict(
        kv_cache_space=0.1, max_model_len=256, block_size=16, dtype="float32"
    ),
    "tiny": dict(
        kv_cache_space=0.02, max_model_len=256, block_size=16, dtype="float32"
    ),
}
NEW_TOKENS = {"smollm2": 24, "tiny": 32}


def _kind(model: str) -> str:
    return "smollm2" if model == "smollm2" else "tiny"


def _prompts(model: str, path: str) -> list[list[int]]:
    if model == "smollm2":
        from vllm.transformers_utils.model_resolver import load_tokenizer

        tokenizer = load_tokenizer(path)
        return [tokenizer.encode(p) for p in SMOLLM2_PROMPTS]
    gen = torch.Generator().manual_seed(11)
    return [torch.randint(3, 1024, (n,), generator=gen).tolist() for n in (5, 17, 33)]


def run_workload(llm: LLM, prompts: list[list[int]], kind: str) -> dict:
    """Greedy tokens, and seeded samples (two per prompt), per prompt."""
    inputs = [{"prompt_token_ids": p} for p in prompts]
    greedy = SamplingParams(
        temperature=0.0, max_tokens=NEW_TOKENS[kind], ignore_eos=True
    )
    seeded = [
        SamplingParams(temperature=0.9, seed=100 + i, n=2, max_tokens=12)
        for i in range(len(prompts))
    ]
    outs = llm.generate(inputs, greedy, use_tqdm=False)
    samples = llm.generate(inputs, seeded, use_tqdm=False)
    return {
        "greedy": [o.outputs[0].token_ids for o in outs],
        "seeded": [[c.token_ids for c in o.outputs] for o in samples],
    }


@pytest.fixture(scope="module")
def model_path(tiny_model, smollm2_path):
    return lambda model: smollm2_path if model == "smollm2" else tiny_model(model)


@pytest.fixture(scope="module")
def references(model_path):
    """references(model) -> prompts, the TP=1 workload and HF's greedy tokens."""
    made: dict[str, dict] = {}

    def get(model: str) -> dict:
        if model not in made:
            path, kind = model_path(model), _kind(model)
            prompts = _prompts(model, path)
            threads = torch.get_num_threads()
            llm = LLM(path, **ENGINE_KWARGS[kind])
            ref = run_workload(llm, prompts, kind)
            llm.shutdown()
            torch.set_num_threads(threads)
            ref["hf"], _ = hf_greedy(path, prompts, NEW_TOKENS[kind])
            ref["prompts"] = prompts
            made[model] = ref
        return made[model]

    return get


@pytest.fixture(scope="module")
def ray_cluster():
    """One Ray for the module; the backend joins it rather than start its own."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def case(request, model_path, references):
    """-> (case id, LLM, TP size, model). Restores the test process's torch thread
    count afterwards, since rank 0 runs here and pins it."""
    backend, model, tp = CASES[request.param]
    references(model)  # while no TP engine owns this process's world group
    if backend == "ray":
        request.getfixturevalue("ray_cluster")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        if request.param in PINNED:
            mp.setenv("VLLM_CPU_NUM_THREADS", str(_default_threads(tp) + 1))
        llm = LLM(
            model_path(model),
            tensor_parallel_size=tp,
            distributed_executor_backend=backend,
            **ENGINE_KWARGS[_kind(model)],
        )
    yield request.param, llm, tp, model
    llm.shutdown()
    torch.set_num_threads(threads)


def _default_threads(tp: int) -> int:
    return max(1, (os.cpu_count() or 1) // tp)


def test_greedy_and_seeded_tokens_match_tp1_and_hf(case, references):
    _, llm, _, model = case
    ref = references(model)
    got = run_workload(llm, ref["prompts"], _kind(model))
    assert got["greedy"] == ref["greedy"]
    assert got["greedy"] == ref["hf"]
    assert got["seeded"] == ref["seeded"]
    # The seeds did make the two samples of a prompt differ (sampling is live).
    assert any(a != b for a, b in got["seeded"])


def test_kv_blocks_fit_the_rank_with_most_kv_heads(case, model_path):
    _, llm, tp, model = case
    hf = AutoConfig.from_pretrained(model_path(model))
    kv_heads = hf.num_key_value_heads
    head_size = (
        getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    )
    # Split KV heads give kv_heads / tp per rank; replicated ones one per rank.
    per_rank = -(-kv_heads // tp)
    block_bytes = 2 * hf.num_hidden_layers * 16 * per_rank * head_size * 4
    space = ENGINE_KWARGS[_kind(model)]["kv_cache_space"] * (1 << 30)
    assert llm.llm_engine.num_kv_blocks == int(space) // block_bytes
    by_rank = llm.llm_engine.executor.collective_rpc("determine_num_available_blocks")
    assert len(by_rank) == tp
    assert llm.llm_engine.num_kv_blocks == min(by_rank)


def test_every_rank_pins_its_torch_threads(case):
    name, llm, tp, _ = case
    executor = llm.llm_engine.executor
    # No worker method reports the thread count: install torch's own getter on
    # every rank's worker (through __setattr__, which every object has), call it.
    executor.collective_rpc("__setattr__", ("probe_threads", torch.get_num_threads))
    got = executor.collective_rpc("probe_threads")
    if name in PINNED:
        want = _default_threads(tp) + 1
    else:
        want = envs.VLLM_CPU_NUM_THREADS or _default_threads(tp)
    assert got == [want] * tp
    pids = executor.collective_rpc("get_pid")
    assert pids[0] == os.getpid() and len(set(pids)) == tp
