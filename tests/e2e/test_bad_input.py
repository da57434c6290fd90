"""Bad input is refused with a ValueError naming what is wrong, and the engine keeps
serving; bad models fail at start-up saying what was expected."""

import json
import math
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
    assert engine.get_num_unfinished_requests() == 0
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
    ("temperature", dict(temperature=math.nan)),
    ("top_p", dict(top_p=math.inf)),
    ("seed", dict(seed=2**64)),
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


def _mutated(**fields) -> SamplingParams:
    """Params made valid, then changed: the engine's door must still catch it."""
    params = SamplingParams(temperature=0.0, max_tokens=8)
    for name, value in fields.items():
        setattr(params, name, value)
    return params


# Refused by add_request itself: (prompt, params, exception, text of the message)
BAD_REQUESTS = [
    (GOOD, SamplingParams(n=100000), ValueError, "got 100000: 100000 completions"),
    (GOOD, SamplingParams(logprobs=100000), ValueError, "logprobs must be <= 20"),
    (GOOD, SamplingParams(prompt_logprobs=21), ValueError, "prompt_logprobs must"),
    (GOOD, _mutated(temperature=math.nan), ValueError, "temperature must be a fin"),
    (GOOD, _mutated(n=None), TypeError, "n must be an int; got NoneType"),
    (GOOD, {"temperature": 0.0}, TypeError, "params must be a SamplingParams"),
    (None, GREEDY, TypeError, "prompt must be a string"),
    ({"prompt_token_ids": None}, GREEDY, TypeError, "prompt_token_ids must be"),
    ({"prompt": None}, GREEDY, TypeError, "prompt must be a string; got NoneType"),
    ({"prompt_token_ids": [1, 2.5]}, GREEDY, TypeError, "prompt_token_ids[1] must"),
    (GOOD, SamplingParams(stop_token_ids=[4096]), ValueError, "stop_token_ids[0]"),
    (GOOD, SamplingParams(min_tokens=200, max_tokens=None), ValueError, "min_tok"),
]


def test_engine_completes_added_request_after_bad_add(llm, reference):
    engine = llm.llm_engine
    engine.add_request("keep", GOOD, GREEDY)
    engine.step()  # "keep" is now running, with KV blocks
    for i, (_, prompt, field) in enumerate(BAD_PROMPTS):
        with pytest.raises(ValueError, match=field):
            engine.add_request(f"bad{i}", prompt, GREEDY)
    for i, (prompt, params, error, text) in enumerate(BAD_REQUESTS):
        with pytest.raises(error) as info:
            engine.add_request(f"bad-request{i}", prompt, params)
        assert text in str(info.value)
    with pytest.raises(ValueError, match="request_id"):
        engine.add_request("keep", GOOD, GREEDY)
    with pytest.raises(TypeError, match="request_id must be a string"):
        engine.add_request(7, GOOD, GREEDY)
    assert engine.get_num_unfinished_requests() == 1
    assert [len(q) for q in (engine.scheduler.running, engine.scheduler.waiting)] == [
        1,
        0,
    ]
    final = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            assert out.request_id == "keep"
            final = out
    assert final.finished and final.outputs[0].token_ids == reference
    _assert_still_serving(llm, reference)


@pytest.mark.parametrize(
    "prompts, params, message",
    [
        (None, GREEDY, "prompts must be str or dict or a list of them; got NoneType"),
        (b"hi", GREEDY, "prompts must be str or dict or a list of them; got bytes"),
        ([GOOD, 5], GREEDY, "prompts[1] must be str or dict; got int 5"),
        (GOOD, "greedy", "sampling_params must be SamplingParams or a list of"),
        ([GOOD, GOOD], [GREEDY, None], "sampling_params[1] must be SamplingParams"),
    ],
)
def test_wrong_types_to_generate_name_the_argument(
    llm, reference, prompts, params, message
):
    # These used to end deep inside ("object of type 'NoneType' has no len()").
    with pytest.raises(TypeError) as info:
        llm.generate(prompts, params, use_tqdm=False)
    assert message in str(info.value)
    _assert_still_serving(llm, reference)


def test_rejected_batch_leaves_nothing_and_uses_no_ids(llm, reference):
    first = llm.generate(GOOD, GREEDY, use_tqdm=False)[0].request_id
    bad_batch = [GOOD, GOOD, {"prompt_token_ids": [5, 4096]}]
    with pytest.raises(ValueError) as info:
        llm.generate(bad_batch, GREEDY, use_tqdm=False)
    # The message says which prompt of the batch was refused.
    assert str(info.value).startswith(
        "prompts[2]: prompt_token_ids[1]: token id 4096 is out of vocabulary"
    )
    with pytest.raises(ValueError, match=r"^prompts\[1\]: logprobs must be <= 20"):
        llm.generate([GOOD] * 2, [GREEDY, SamplingParams(logprobs=21)], use_tqdm=False)
    _assert_still_serving(llm, reference)  # also one more request
    after = llm.generate(GOOD, GREEDY, use_tqdm=False)[0].request_id
    assert int(after) == int(first) + 2


def test_issue_reports_fixed(llm, reference):
    """The failures reported in issue 16, as a new user met them."""
    # n=100000 was accepted and generate never returned.
    with pytest.raises(
        ValueError, match=r"^n must be <= \d+ .* got 100000: .* lower n"
    ):
        llm.generate(GOOD, SamplingParams(n=100000), use_tqdm=False)
    # logprobs=100000 crashed the step ("selected index k out of range").
    with pytest.raises(ValueError, match=r"^logprobs must be <= 20 \(max_logprobs"):
        llm.generate(GOOD, SamplingParams(logprobs=100000), use_tqdm=False)
    # temperature=nan was accepted and generation ran.
    with pytest.raises(ValueError, match="^temperature must be a finite number"):
        SamplingParams(temperature=math.nan)
    # Wrong types ended in "object of type 'NoneType' has no len()".
    with pytest.raises(TypeError, match="^prompts must be str or dict"):
        llm.generate(None, use_tqdm=False)
    with pytest.raises(TypeError, match="^max_tokens must be an int or None; got str"):
        SamplingParams(max_tokens="16")
    _assert_still_serving(llm, reference)


def test_max_logprobs_is_the_limit(llm):
    params = SamplingParams(
        temperature=0.0, max_tokens=3, logprobs=20, prompt_logprobs=20
    )
    out = llm.generate(GOOD, params, use_tqdm=False)[0]
    for entry in out.outputs[0].logprobs + out.prompt_logprobs[1:]:
        assert 20 <= len(entry) <= 21  # the top 20, and the chosen token


@pytest.fixture(scope="module")
def tight(tiny_model):
    """16 KV blocks of 16 tokens; logprobs capped only by the vocabulary."""
    engine = LLM(
        tiny_model("llama_gqa"),
        num_gpu_blocks_override=16,
        max_model_len=MAX_MODEL_LEN,
        max_logprobs=-1,
    )
    yield engine
    engine.shutdown()


def test_n_copies_of_a_long_prompt_must_fit_the_cache(tight):
    engine = tight.llm_engine
    prompt = {"prompt_token_ids": list(range(3, 103))}  # 100 tokens
    # 100 + 12 tokens = 7 blocks per completion: 2 fit in 16 blocks, 3 never do.
    short = dict(temperature=0.0, max_tokens=12, ignore_eos=True)
    with pytest.raises(ValueError) as info:
        engine.add_request("three", prompt, SamplingParams(n=3, **short))
    assert str(info.value).startswith(
        "n must be <= 2 for this prompt and max_tokens; got 3: 3 completions of up "
        "to 112 tokens (100 prompt + 12 max_tokens) need 21 KV blocks, but the KV "
        "cache holds 16 blocks of 16 tokens"
    )
    assert not engine.has_unfinished_requests()
    out = tight.generate(prompt, SamplingParams(n=2, **short), use_tqdm=False)
    assert [len(c.token_ids) for c in out[0].outputs] == [12, 12]
    # max_tokens=None means up to max_model_len: 8 blocks each, so n=2 still fits.
    full = SamplingParams(n=2, temperature=0.0, max_tokens=None, ignore_eos=True)
    out = tight.generate(prompt, full, use_tqdm=False)
    assert [len(c.token_ids) for c in out[0].outputs] == [28, 28]
    with pytest.raises(ValueError, match="^n must be <= 2 .* of up to 128 tokens"):
        tight.generate(prompt, SamplingParams(n=3, max_tokens=None), use_tqdm=False)
    assert engine.scheduler.block_manager.num_free_blocks == engine.num_kv_blocks


def test_with_prefix_caching_n_completions_share_the_prompt(tiny_model):
    # The same 16 blocks: 6 full prompt blocks shared, one block per completion.
    llm = LLM(
        tiny_model("llama_gqa"),
        num_gpu_blocks_override=16,
        max_model_len=MAX_MODEL_LEN,
        enable_prefix_caching=True,
    )
    try:
        engine = llm.llm_engine
        prompt = {"prompt_token_ids": list(range(3, 103))}
        short = dict(temperature=1.0, seed=5, max_tokens=12, ignore_eos=True)
        out = llm.generate(prompt, SamplingParams(n=10, **short), use_tqdm=False)
        assert [len(c.token_ids) for c in out[0].outputs] == [12] * 10
        with pytest.raises(ValueError) as info:
            llm.generate(prompt, SamplingParams(n=11, **short), use_tqdm=False)
        assert str(info.value).startswith(
            "n must be <= 10 for this prompt and max_tokens; got 11: 11 completions "
            "of up to 112 tokens (100 prompt + 12 max_tokens) need 17 KV blocks, 6 "
            "prompt blocks shared, but the KV cache holds 16 blocks of 16 tokens"
        )
        assert not engine.has_unfinished_requests()
        assert engine.scheduler.block_manager.num_free_blocks == engine.num_kv_blocks
    finally:
        llm.shutdown()


def test_max_logprobs_minus_one_allows_the_vocabulary(tight):
    vocab = tight.llm_engine.config.model_config.vocab_size
    params = SamplingParams(temperature=0.0, max_tokens=2, logprobs=vocab)
    out = tight.generate(GOOD, params, use_tqdm=False)[0].outputs[0]
    assert [len(entry) for entry in out.logprobs] == [vocab, vocab]
    with pytest.raises(ValueError, match=rf"<= {vocab} \(the vocabulary size\)"):
        tight.generate(GOOD, SamplingParams(logprobs=vocab + 1), use_tqdm=False)


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
