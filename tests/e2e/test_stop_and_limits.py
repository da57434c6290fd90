"""When generation ends and what it reports: stop strings, stop tokens, EOS,
max_tokens, min_tokens, max_model_len; logprobs; text of multi-byte output.

Expected values come from an unconstrained greedy run of the same prompt, never
from the engine's code."""

import pytest

from vllm import LLM, SamplingParams

COUNT_PROMPT = "1, 2, 3, 4,"
CHAT = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    llm = LLM(smollm2_path, kv_cache_space=0.25, max_model_len=512)
    yield llm
    llm.shutdown()


@pytest.fixture(scope="module")
def tiny(tiny_model):
    llm = LLM(tiny_model("llama_gqa"), kv_cache_space=0.05, max_model_len=64)
    yield llm
    llm.shutdown()


def _one(llm: LLM, prompt, **kwargs):
    """-> the single CompletionOutput of a greedy run."""
    params = SamplingParams(**{"temperature": 0.0, **kwargs})
    return llm.generate(prompt, params, use_tqdm=False)[0].outputs[0]


@pytest.fixture(scope="module")
def counting(smollm2):
    """The unconstrained greedy continuation of COUNT_PROMPT."""
    full = _one(smollm2, COUNT_PROMPT, max_tokens=30, ignore_eos=True)
    assert len(full.text) > 20
    return full


def _first_at(text: str, start: int, size: int) -> tuple[int, str]:
    """A substring of text from start on, of this size, whose first occurrence
    in text is where it was taken."""
    for i in range(start, len(text) - size):
        piece = text[i : i + size]
        if text.find(piece) == i and piece.strip():
            return i, piece
    raise AssertionError(f"no unique substring in {text!r}")


@pytest.mark.slow
@pytest.mark.parametrize("start", [3, 12])
def test_stop_string_truncates_text(smollm2, counting, start):
    index, stop = _first_at(counting.text, start, 3)
    out = _one(smollm2, COUNT_PROMPT, max_tokens=30, stop=stop)
    assert out.text == counting.text[:index]
    assert out.finish_reason == "stop"
    assert out.stop_reason == stop
    # Generation ends on the token that completed the stop string.
    assert out.token_ids == counting.token_ids[: len(out.token_ids)]
    tokenizer = smollm2.get_tokenizer()
    assert stop in tokenizer.decode(out.token_ids)
    assert stop not in tokenizer.decode(out.token_ids[:-1])


@pytest.mark.slow
def test_stop_string_included_on_request(smollm2, counting):
    index, stop = _first_at(counting.text, 8, 4)
    out = _one(
        smollm2,
        COUNT_PROMPT,
        max_tokens=30,
        stop=[stop],
        include_stop_str_in_output=True,
    )
    assert out.text == counting.text[: index + len(stop)]
    assert out.stop_reason == stop and out.finish_reason == "stop"


@pytest.mark.slow
def test_earliest_stop_string_wins(smollm2, counting):
    early_at, early = _first_at(counting.text, 5, 3)
    _, late = _first_at(counting.text, early_at + 6, 3)
    out = _one(smollm2, COUNT_PROMPT, max_tokens=30, stop=[late, early])
    assert out.stop_reason == early
    assert out.text == counting.text[:early_at]


@pytest.mark.slow
def test_stop_token_id(smollm2, counting):
    ids = counting.token_ids
    pos = next(i for i in range(3, len(ids)) if ids.index(ids[i]) == i)
    out = _one(smollm2, COUNT_PROMPT, max_tokens=30, stop_token_ids=[ids[pos]])
    assert out.token_ids == ids[: pos + 1]
    assert out.finish_reason == "stop"
    assert out.stop_reason == ids[pos]
    # The stopping token's text is left out, unless asked for (as in vLLM).
    tokenizer = smollm2.get_tokenizer()
    assert out.text == tokenizer.decode(ids[:pos], skip_special_tokens=True)
    kept = _one(
        smollm2,
        COUNT_PROMPT,
        max_tokens=30,
        stop_token_ids=[ids[pos]],
        include_stop_str_in_output=True,
    )
    assert kept.text == tokenizer.decode(ids[: pos + 1], skip_special_tokens=True)


@pytest.mark.slow
def test_eos_stops_unless_ignored(smollm2):
    eos = smollm2.get_tokenizer().eos_token_id
    natural = smollm2.chat(
        CHAT, SamplingParams(temperature=0.0, max_tokens=100), use_tqdm=False
    )
    out = natural[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason is None
    assert out.token_ids[-1] == eos and eos not in out.token_ids[:-1]
    end = len(out.token_ids)
    variants = [
        SamplingParams(temperature=0.0, max_tokens=end + 5, ignore_eos=True),
        # min_tokens past the natural end keeps EOS out until then.
        SamplingParams(temperature=0.0, max_tokens=end + 20, min_tokens=end + 10),
    ]
    prompt = {"prompt_token_ids": natural[0].prompt_token_ids}
    longer, held = (
        o.outputs[0] for o in smollm2.generate([prompt] * 2, variants, use_tqdm=False)
    )
    assert longer.finish_reason == "length"
    assert len(longer.token_ids) == end + 5
    assert longer.token_ids[:end] == out.token_ids
    assert len(held.token_ids) >= end + 10
    assert eos not in held.token_ids[: end + 10]
    assert held.token_ids[: end - 1] == out.token_ids[:-1]


@pytest.mark.slow
def test_min_tokens_delays_stop_string(smollm2, counting):
    index, stop = _first_at(counting.text, 2, 2)
    early = _one(smollm2, COUNT_PROMPT, max_tokens=30, stop=stop)
    floor = len(early.token_ids) + 3
    out = _one(smollm2, COUNT_PROMPT, max_tokens=30, stop=stop, min_tokens=floor)
    assert len(out.token_ids) >= floor
    assert out.text.startswith(counting.text[: index + len(stop)])


def test_min_tokens_delays_stop_token(tiny):
    prompt = {"prompt_token_ids": [9, 99, 999, 19, 199]}
    first = _one(tiny, prompt, max_tokens=1).token_ids[0]
    plain = _one(tiny, prompt, max_tokens=30, stop_token_ids=[first])
    assert plain.token_ids == [first] and plain.stop_reason == first
    out = _one(tiny, prompt, max_tokens=30, stop_token_ids=[first], min_tokens=6)
    assert len(out.token_ids) >= 6
    assert first not in out.token_ids[:6]
    if first in out.token_ids:
        assert out.token_ids.index(first) == len(out.token_ids) - 1
        assert out.finish_reason == "stop"


@pytest.mark.parametrize("max_tokens", [1, 7, 23])
def test_max_tokens_exact(tiny, max_tokens):
    out = _one(
        tiny, {"prompt_token_ids": [3, 4, 5]}, max_tokens=max_tokens, ignore_eos=True
    )
    assert len(out.token_ids) == max_tokens
    assert out.finish_reason == "length" and out.stop_reason is None


@pytest.mark.parametrize("max_tokens", [None, 100, 14])
def test_max_model_len_caps_generation(tiny, max_tokens):
    prompt = {"prompt_token_ids": list(range(10, 60))}  # 50 of 64 positions
    out = _one(tiny, prompt, max_tokens=max_tokens, ignore_eos=True)
    assert len(out.token_ids) == 64 - 50
    assert out.finish_reason == "length"


def test_prompt_one_short_of_max_model_len_gets_one_token(tiny):
    out = _one(tiny, {"prompt_token_ids": list(range(10, 73))}, max_tokens=5)
    assert len(out.token_ids) == 1 and out.finish_reason == "length"


@pytest.mark.parametrize("k", [0, 3])
def test_sample_logprobs(tiny, k):
    params = SamplingParams(
        temperature=1.5, seed=3, max_tokens=40, ignore_eos=True, logprobs=k
    )
    out = tiny.generate({"prompt_token_ids": [7, 8, 9]}, params, use_tqdm=False)
    completion = out[0].outputs[0]
    assert len(completion.logprobs) == len(completion.token_ids) == 40
    sizes = set()
    total = 0.0
    for token, entry in zip(completion.token_ids, completion.logprobs):
        assert token in entry
        sizes.add(len(entry))
        extra = len(entry) == k + 1  # the sampled token is outside the top k
        top = [lp for t, lp in entry.items() if not (extra and t == token)]
        top.sort(key=lambda lp: -lp.logprob)
        assert [lp.rank for lp in top] == list(range(1, k + 1))
        if extra:
            assert entry[token].rank > k
            assert not top or entry[token].logprob <= top[-1].logprob
        total += entry[token].logprob
    # Flat random-model logits at temperature 1.5 often sample outside the top k.
    assert sizes == ({1} if k == 0 else {k, k + 1})
    assert completion.cumulative_logprob == pytest.approx(total, abs=1e-4)


@pytest.mark.parametrize("k", [0, 2])
def test_prompt_logprobs_shape(tiny, k):
    prompt = [11, 12, 13, 500, 600, 700, 3]
    params = SamplingParams(max_tokens=2, prompt_logprobs=k)
    out = tiny.generate({"prompt_token_ids": prompt}, params, use_tqdm=False)[0]
    assert len(out.prompt_logprobs) == len(prompt)
    assert out.prompt_logprobs[0] is None
    for token, entry in zip(prompt[1:], out.prompt_logprobs[1:]):
        assert token in entry
        assert k <= len(entry) <= k + 1
    assert out.outputs[0].logprobs is None
    assert out.outputs[0].cumulative_logprob is None


@pytest.mark.slow
def test_multibyte_text_equals_decode(smollm2):
    tokenizer = smollm2.get_tokenizer()
    prompts = ["Emoji story: 🐶🐱", "日本の首都は", "中文：我喜欢"]
    # 39 tokens happens to end some of these inside a character (checked below).
    params = SamplingParams(temperature=0.0, max_tokens=39, ignore_eos=True)
    outs = smollm2.generate(prompts, params, use_tqdm=False)
    cut_mid_char = 0
    for out in outs:
        completion = out.outputs[0]
        assert completion.finish_reason == "length"
        assert len(completion.token_ids) == 39
        want = tokenizer.decode(completion.token_ids, skip_special_tokens=True)
        assert completion.text == want
        cut_mid_char += want.endswith("\ufffd")
    assert cut_mid_char > 0  # some completion ends inside a character
