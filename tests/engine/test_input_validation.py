"""The engine's front door without a model: prompt forms, the model's limits and
the KV-cache bound on n, checked against small hand-made limits."""

import pytest

from vllm import SamplingParams
from vllm.engine.input_validation import InputValidator, RequestLimits

EOS = 2
LIMITS = RequestLimits(
    max_model_len=64,
    vocab_size=100,
    max_logprobs=5,
    eos_token_id=EOS,
    block_size=4,
    num_kv_blocks=40,
)


class CharTokenizer:
    """One token per character (its code point), as far as tests need."""

    eos_token_id = EOS

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


def _validator(**overrides) -> InputValidator:
    limits = RequestLimits(**{**LIMITS.__dict__, **overrides})
    return InputValidator(limits, CharTokenizer())


def _ids(n: int) -> dict:
    return {"prompt_token_ids": [5] * n}


@pytest.mark.parametrize(
    "prompt, text, ids",
    [
        ("ab", "ab", [97, 98]),
        ({"prompt": "ab"}, "ab", [97, 98]),
        ({"prompt_token_ids": (7, 8)}, None, [7, 8]),
        # Both keys: the ids are what the model sees; the text is echoed back.
        ({"prompt": "shown", "prompt_token_ids": [9]}, "shown", [9]),
    ],
)
def test_prompt_forms(prompt, text, ids):
    checked = _validator().check("r", prompt, None)
    assert (checked.prompt, checked.prompt_token_ids) == (text, ids)
    assert checked.params == SamplingParams()
    assert checked.max_tokens == 16


@pytest.mark.parametrize(
    "prompt, error, message",
    [
        (None, TypeError, "prompt must be a string, {'prompt': str} or"),
        (b"ab", TypeError, "prompt must be a string"),
        ([1, 2], TypeError, "prompt must be a string"),
        (
            {},
            ValueError,
            "prompt dict keys must be 'prompt' and/or 'prompt_token_ids'; got keys []",
        ),
        ({"text": "hi"}, ValueError, "got keys ['text']"),
        ({"prompt": "a", "ids": [1]}, ValueError, "got keys ['prompt', 'ids']"),
        ({"prompt": 5}, TypeError, "prompt must be a string; got int 5"),
        ({"prompt": "a", "prompt_token_ids": None}, TypeError, "prompt_token_ids"),
        ({"prompt": b"a", "prompt_token_ids": [1]}, TypeError, "prompt must be"),
        ({"prompt_token_ids": "abc"}, TypeError, "must be a list of ints; got str"),
        ({"prompt_token_ids": [1, 2.0]}, TypeError, "prompt_token_ids[1] must be an"),
        (
            {"prompt_token_ids": [1, 100]},
            ValueError,
            "[1]: token id 100 is out of vocabulary (vocabulary size 100",
        ),
        (
            {"prompt_token_ids": [-1]},
            ValueError,
            "prompt_token_ids[0]: token id -1 is out of vocabulary",
        ),
        ("", ValueError, "prompt is empty"),
        ({"prompt_token_ids": []}, ValueError, "prompt is empty"),
        (_ids(200), ValueError, "(200 tokens) must be shorter than max_model_len"),
        # A text prompt's tokens are checked too.
        (
            "a" * 9 + "é",
            ValueError,
            "prompt_token_ids[9]: token id 233 is out of vocabulary",
        ),
    ],
)
def test_bad_prompt(prompt, error, message):
    with pytest.raises(error) as info:
        _validator(max_model_len=200).check("r", prompt)
    assert message in str(info.value)


def test_request_id_and_params_types():
    v = _validator()
    with pytest.raises(TypeError, match="request_id must be a string; got int 3"):
        v.check(3, "a")
    with pytest.raises(TypeError, match="params must be a SamplingParams or None"):
        v.check("r", "a", {"temperature": 0.0})


def test_params_checked_again_and_copied():
    params = SamplingParams(temperature=0.5, stop="x")
    checked = _validator().check("r", "a", params)
    assert checked.params == params and checked.params is not params
    params.stop.append("y")  # later changes do not reach the engine
    assert checked.params.stop == ["x"]
    # A field changed after construction is caught at the door.
    for name, value, error in [
        ("temperature", float("nan"), ValueError),
        ("n", "2", TypeError),
        ("stop", [""], ValueError),
        ("min_tokens", 20, ValueError),  # > max_tokens 16
    ]:
        bad = SamplingParams()
        setattr(bad, name, value)
        with pytest.raises(error, match=name):
            _validator().check("r", "a", bad)


@pytest.mark.parametrize(
    "max_logprobs, cap, why",
    [(5, 5, "max_logprobs: raise it with --max-logprobs"), (-1, 100, "vocabulary")],
)
@pytest.mark.parametrize("name", ["logprobs", "prompt_logprobs"])
def test_logprobs_cap(name, max_logprobs, cap, why):
    v = _validator(max_logprobs=max_logprobs)
    assert v.check("r", "a", SamplingParams(**{name: cap}))
    with pytest.raises(ValueError) as info:
        v.check("r", "a", SamplingParams(**{name: cap + 1}))
    message = str(info.value)
    assert message.startswith(f"{name} must be <= {cap} (") and why in message
    assert message.endswith(f"got {cap + 1}")


def test_logprobs_cap_never_above_vocabulary():
    v = _validator(max_logprobs=1000)
    with pytest.raises(ValueError, match=r"<= 100 \(the vocabulary size\); got 101"):
        v.check("r", "a", SamplingParams(logprobs=101))


def test_stop_token_ids_in_vocabulary_and_not_contradicting_ignore_eos():
    v = _validator()
    assert v.check("r", "a", SamplingParams(stop_token_ids=[0, 99]))
    with pytest.raises(
        ValueError, match=r"stop_token_ids\[1\]: token id 100 is out of"
    ):
        v.check("r", "a", SamplingParams(stop_token_ids=[3, 100]))
    # EOS as a stop token is fine on its own, contradictory with ignore_eos.
    assert v.check("r", "a", SamplingParams(stop_token_ids=[EOS]))
    with pytest.raises(ValueError, match="EOS token id 2 while ignore_eos=True"):
        v.check("r", "a", SamplingParams(stop_token_ids=[EOS], ignore_eos=True))


def test_max_tokens_resolved_against_room():
    v = _validator()
    assert v.check("r", _ids(60), SamplingParams(max_tokens=None)).max_tokens == 4
    assert v.check("r", _ids(60), SamplingParams(max_tokens=100)).max_tokens == 4
    assert v.check("r", _ids(60), SamplingParams(max_tokens=3)).max_tokens == 3
    assert v.check("r", _ids(60), SamplingParams(min_tokens=4, max_tokens=9))
    with pytest.raises(ValueError) as info:
        v.check("r", _ids(60), SamplingParams(min_tokens=5, max_tokens=9))
    assert str(info.value) == (
        "min_tokens (5) is more than the 4 tokens left after the prompt "
        "(60 tokens) within max_model_len (64)"
    )


@pytest.mark.parametrize(
    "prompt_len, max_tokens, per_completion",
    [(3, 1, 1), (3, 2, 2), (10, 6, 4), (10, None, 16), (63, 1, 16)],
)
def test_n_bounded_by_kv_cache(prompt_len, max_tokens, per_completion):
    # Every completion at its longest (prompt + max_tokens, in blocks of 4),
    # all at once, within the 40 blocks.
    v = _validator()
    most = 40 // per_completion
    params = SamplingParams(n=most, max_tokens=max_tokens)
    assert v.check("r", _ids(prompt_len), params).params.n == most
    with pytest.raises(ValueError) as info:
        v.check(
            "r", _ids(prompt_len), SamplingParams(n=most + 1, max_tokens=max_tokens)
        )
    message = str(info.value)
    assert message.startswith(
        f"n must be <= {most} for this prompt and max_tokens; got {most + 1}: "
    )
    assert f"need {(most + 1) * per_completion} KV blocks, but" in message
    assert "holds 40 blocks of 4 tokens; lower n, max_tokens" in message
    assert "--kv-cache-space" in message


def test_huge_n_refused_at_once():
    with pytest.raises(ValueError, match=r"^n must be <= 8 .*; got 100000: "):
        _validator().check("r", "a", SamplingParams(n=100000))


@pytest.mark.parametrize(
    "prompt_len, max_tokens, shared, own",
    # Blocks of 4: the prompt's full blocks before its last token are shared.
    [(3, 1, 0, 1), (5, 3, 1, 1), (8, 1, 1, 2), (9, 7, 2, 2), (30, 2, 7, 1)],
)
def test_prefix_caching_counts_shared_prompt_blocks_once(
    prompt_len, max_tokens, shared, own
):
    v = _validator(prefix_caching=True)
    most = (40 - shared) // own
    params = SamplingParams(n=most, max_tokens=max_tokens)
    assert v.check("r", _ids(prompt_len), params)
    with pytest.raises(ValueError) as info:
        v.check(
            "r", _ids(prompt_len), SamplingParams(n=most + 1, max_tokens=max_tokens)
        )
    message = str(info.value)
    assert message.startswith(f"n must be <= {most} for this prompt")
    need = shared + (most + 1) * own
    via = f", {shared} prompt blocks shared" if shared else ""
    assert f"need {need} KV blocks{via}, but" in message
    # prompt_logprobs makes each completion compute its whole prompt.
    beyond = 40 // (shared + own) + 1
    with_logprobs = SamplingParams(n=beyond, max_tokens=max_tokens, prompt_logprobs=0)
    with pytest.raises(ValueError, match=rf"^n must be <= \d+ .*; got {beyond}: "):
        v.check("r", _ids(prompt_len), with_logprobs)
    if shared:
        assert v.check(
            "r", _ids(prompt_len), SamplingParams(n=beyond, max_tokens=max_tokens)
        )
