"""Bad input is refused with a ValueError naming what is wrong, and the engine keeps
serving; bad models fail at start-up saying what was expected."""

import json
import multiprocessing
import os
import shutil
import time

import pytest

from vllm import LLM, SamplingParams

MAX_MODEL_LEN = 128
GOOD = {"prompt_token_ids": [10, 20, 30, 40]}
GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_model):
    engine = LLM(
        tiny_model("llama_gqa"), kv_cache_space=0.05, max_model_len=MAX_MODEL_LEN
    )
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def reference(llm) -> list[int]:
    return llm.generate(GOOD, GREEDY, use_tqdm=False)[0].outputs[0].token_ids


def _assert_still_serving(llm: LLM, reference: list[int]) -> None:
    engine = llm.llm_engine
    assert not engine.has_unfinished_requests()
    assert engine.scheduler.block_manager.num_free_blocks == engine.num_kv_blocks
    out = llm.generate(GOOD, GREEDY, use_tqdm=False)[0]
    assert out.outputs[0].token_ids == reference


BAD_PROMPTS = [
    ("empty", {"prompt_token_ids": []}, "empty"),
    ("empty_text", "", "empty"),
    ("too_long", {"prompt_token_ids": [5] * MAX_MODEL_LEN}, "max_model_len"),
    ("vocab_high", {"prompt_token_ids": [5, 1024, 6]}, "vocab"),
    ("vocab_negative", {"prompt_token_ids": [5, -1]}, "vocab"),
    ("not_a_prompt", {"text": "hello"}, "prompt"),
]


@pytest.mark.parametrize(
    "prompt, field", [b[1:] for b in BAD_PROMPTS], ids=[b[0] for b in BAD_PROMPTS]
)
def test_bad_prompt_alone(llm, reference, prompt, field):
    with pytest.raises(ValueError, match=field):
        llm.generate(prompt, GREEDY, use_tqdm=False)
    _assert_still_serving(llm, reference)


def test_bad_prompt_inside_a_batch(llm, reference):
    # The good prompts before the bad one were already added: they must be
    # withdrawn, not left running or holding KV blocks.
    batch = [GOOD, {"prompt_token_ids": [7] * 50}, {"prompt_token_ids": [5, 4096]}]
    with pytest.raises(ValueError, match="vocab"):
        llm.generate(batch, GREEDY, use_tqdm=False)
    _assert_still_serving(llm, reference)


BAD_PARAMS = [
    ("temperature", dict(temperature=-0.5)),
    ("top_p", dict(top_p=0.0)),
    ("top_p", dict(top_p=1.01)),
    ("top_k", dict(top_k=0)),
    ("top_k", dict(top_k=-2)),
    ("min_p", dict(min_p=-0.1)),
    ("min_p", dict(min_p=1.5)),
    ("n", dict(n=0)),
    ("max_tokens", dict(max_tokens=0)),
    ("min_tokens", dict(min_tokens=9, max_tokens=8)),
    ("logprobs", dict(logprobs=-1)),
    ("prompt_logprobs", dict(prompt_logprobs=-2)),
    ("repetition_penalty", dict(repetition_penalty=0.0)),
    ("presence_penalty", dict(presence_penalty=2.5)),
    ("frequency_penalty", dict(frequency_penalty=-3.0)),
    ("stop", dict(stop=["ok", ""])),
]


@pytest.mark.parametrize(
    "field, kwargs",
    BAD_PARAMS,
    ids=[",".join(f"{k}={v!r}" for k, v in kw.items()) for _, kw in BAD_PARAMS],
)
def test_bad_sampling_params(llm, reference, field, kwargs):
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        SamplingParams(**kwargs)
    _assert_still_serving(llm, reference)


def test_params_list_length_mismatch(llm, reference):
    with pytest.raises(ValueError, match="sampling_params"):
        llm.generate([GOOD, GOOD], [GREEDY], use_tqdm=False)
    _assert_still_serving(llm, reference)


def test_engine_completes_added_request_after_bad_add(llm, reference):
    engine = llm.llm_engine
    engine.add_request("keep", GOOD, GREEDY)
    engine.step()  # "keep" is now running, with KV blocks
    for i, (_, prompt, field) in enumerate(BAD_PROMPTS):
        with pytest.raises(ValueError, match=field):
            engine.add_request(f"bad{i}", prompt, GREEDY)
    with pytest.raises(ValueError, match="request_id"):
        engine.add_request("keep", GOOD, GREEDY)
    assert engine.get_num_unfinished_requests() == 1
    final = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            assert out.request_id == "keep"
            final = out
    assert final.finished and final.outputs[0].token_ids == reference
    _assert_still_serving(llm, reference)


def test_missing_model_path(tmp_path):
    missing = str(tmp_path / "no_such_model")
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        LLM(missing)
    assert missing in str(info.value) and "config.json" in str(info.value)


def _copy_tokenizer(src: str, dst) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(src, name), dst)


def test_unsupported_architecture(tmp_path, smollm2_path):
    config = dict(
        architectures=["GPT2LMHeadModel"],
        model_type="gpt2",
        n_head=4,
        n_embd=64,
        n_layer=2,
        n_positions=256,
        vocab_size=1024,
    )
    (tmp_path / "config.json").write_text(json.dumps(config))
    _copy_tokenizer(smollm2_path, tmp_path)
    with pytest.raises(ValueError, match="GPT2LMHeadModel") as info:
        LLM(str(tmp_path), kv_cache_space=0.05)
    assert "LlamaForCausalLM" in str(info.value)  # says what is supported


def test_missing_weights(tmp_path, tiny_model):
    src = tiny_model("llama_gqa")
    for name in os.listdir(src):
        if not name.endswith(".safetensors"):
            shutil.copy(os.path.join(src, name), tmp_path)
    with pytest.raises(FileNotFoundError, match="safetensors") as info:
        LLM(str(tmp_path), kv_cache_space=0.05)
    assert "no weights" in str(info.value) and str(tmp_path) in str(info.value)


def test_tp_size_not_dividing_heads_fails_fast(tiny_model):
    start = time.perf_counter()
    with pytest.raises(ValueError, match="tensor_parallel_size 3") as info:
        LLM(
            tiny_model("llama_gqa"),
            tensor_parallel_size=3,
            distributed_executor_backend="mp",
            kv_cache_space=0.05,
        )
    assert "4 attention heads" in str(info.value)
    assert time.perf_counter() - start < 5.0
    assert multiprocessing.active_children() == []
