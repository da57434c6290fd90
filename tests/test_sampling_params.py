import math

import msgspec
import numpy as np
import pytest

from vllm.messages import SamplingOptions
from vllm.outputs import CompletionOutput, Logprob, RequestOutput
from vllm.sampling_params import SamplingParams, SamplingType

# (field, bad value, other kwargs needed to isolate the error)
_INVALID = [
    ("temperature", -0.1, {}),
    ("top_p", 0.0, {}),
    ("top_p", 1.01, {}),
    ("top_k", 0, {}),
    ("top_k", -2, {}),
    ("min_p", -0.01, {}),
    ("min_p", 1.5, {}),
    ("n", 0, {}),
    ("max_tokens", 0, {}),
    ("min_tokens", -1, {}),
    ("min_tokens", 9, {"max_tokens": 8}),
    ("logprobs", -1, {}),
    ("prompt_logprobs", -1, {}),
    ("repetition_penalty", 0.0, {}),
    ("repetition_penalty", -1.0, {}),
    ("presence_penalty", -2.5, {}),
    ("presence_penalty", 2.01, {}),
    ("frequency_penalty", -2.01, {}),
    ("frequency_penalty", 3.0, {}),
    ("seed", 2**63, {}),
    ("seed", -(2**63) - 1, {}),
    ("stop_token_ids", [5, -1], {}),
]


@pytest.mark.parametrize("name,value,extra", _INVALID)
def test_invalid_value_names_field(name, value, extra):
    with pytest.raises(ValueError, match=name):
        SamplingParams(**{name: value}, **extra)


_FLOATS = [
    "temperature",
    "top_p",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400])
@pytest.mark.parametrize("name", _FLOATS)
def test_non_finite_floats_rejected(name, value):
    with pytest.raises(ValueError, match=rf"^{name} must be a finite number; got"):
        SamplingParams(**{name: value})


# (field, value of the wrong type, what the message says is wanted)
_WRONG_TYPES = [
    ("n", None, "an int"),
    ("n", 2.0, "an int"),
    ("n", True, "an int"),
    ("top_k", 2.5, "an int"),
    ("seed", "7", "an int or None"),
    ("max_tokens", "5", "an int or None"),
    ("min_tokens", None, "an int"),
    ("logprobs", 2.5, "an int or None"),
    ("prompt_logprobs", True, "an int or None"),
    ("temperature", "hot", "a number"),
    ("top_p", None, "a number"),
    ("repetition_penalty", False, "a number"),
    ("stop", 5, "a list of strings"),
    ("stop", ["ok", 1], "a string"),
    ("stop_token_ids", 3, "a list of ints"),
    ("stop_token_ids", ["a"], "an int"),
    ("stop_token_ids", [1, True], "an int"),
    ("ignore_eos", 1, "True or False"),
    ("skip_special_tokens", None, "True or False"),
    ("spaces_between_special_tokens", "no", "True or False"),
    ("include_stop_str_in_output", 0, "True or False"),
]


@pytest.mark.parametrize("name,value,wanted", _WRONG_TYPES)
def test_wrong_type_names_field_value_and_type(name, value, wanted):
    with pytest.raises(TypeError) as info:
        SamplingParams(**{name: value})
    message = str(info.value)
    # The field (with the index of a bad list item), what is wanted, what came.
    assert message.startswith(name) and f"must be {wanted}; got" in message
    shown = repr(value[-1] if isinstance(value, list) else value)
    assert message.endswith(shown), message


def test_messages_say_what_is_allowed():
    with pytest.raises(
        ValueError, match=r"^top_p must be in \(0\.0, 1\.0\]; got 0\.0$"
    ):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match=r"^n must be >= 1; got -3$"):
        SamplingParams(n=-3)
    with pytest.raises(ValueError, match=r"^stop_token_ids\[1\] must be >= 0; got -1$"):
        SamplingParams(stop_token_ids=[5, -1])
    with pytest.raises(ValueError, match=r"^top_k must be -1 \(disabled\) or >= 1"):
        SamplingParams(top_k=0)


def test_numeric_types_canonicalised():
    params = SamplingParams(
        n=np.int64(2),
        temperature=np.float32(0.5),
        top_k=np.int32(4),
        top_p=1,
        seed=np.uint8(9),
        max_tokens=np.int16(7),
        stop_token_ids=(np.int64(3),),
    )
    assert type(params.n) is int and params.n == 2
    assert type(params.temperature) is float and params.temperature == 0.5
    assert type(params.top_k) is int and type(params.top_p) is float
    assert type(params.seed) is int and type(params.max_tokens) is int
    assert params.stop_token_ids == [3] and type(params.stop_token_ids[0]) is int
    # Plain msgspec types, so the options survive the wire.
    opts = params.to_options(seed=params.seed, eos_token_id=2)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(opts), type=type(opts)) == opts


def test_seed_bounds_accepted():
    assert SamplingParams(seed=2**63 - 1).seed == 2**63 - 1
    assert SamplingParams(seed=-(2**63)).seed == -(2**63)


def test_empty_stop_string_rejected():
    with pytest.raises(ValueError, match="stop"):
        SamplingParams(stop=["ok", ""])


def test_boundary_values_accepted():
    params = SamplingParams(
        temperature=0.0,
        top_p=1.0,
        top_k=1,
        min_p=1.0,
        presence_penalty=-2.0,
        frequency_penalty=2.0,
        repetition_penalty=1e-3,
        min_tokens=8,
        max_tokens=8,
        logprobs=0,
        prompt_logprobs=0,
    )
    assert params.min_tokens == params.max_tokens == 8
    # max_tokens=None is resolved by the engine, so min_tokens has no bound here.
    assert SamplingParams(max_tokens=None, min_tokens=1000).max_tokens is None


def test_defaults_match_vllm():
    p = SamplingParams()
    assert (p.n, p.temperature, p.top_p, p.top_k, p.min_p) == (1, 1.0, 1.0, -1, 0.0)
    assert (p.max_tokens, p.min_tokens, p.seed, p.logprobs) == (16, 0, None, None)
    assert p.stop == [] and p.stop_token_ids == []
    assert p.skip_special_tokens and not p.include_stop_str_in_output


def test_stop_normalised_to_lists():
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(stop=("a", "b")).stop == ["a", "b"]
    assert SamplingParams(stop_token_ids=(3, 5)).stop_token_ids == [3, 5]


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        ({"temperature": 0.0}, SamplingType.GREEDY),
        ({"temperature": 5e-6, "seed": 3}, SamplingType.GREEDY),
        ({"temperature": 1e-4}, SamplingType.RANDOM),
        ({"temperature": 0.7, "seed": 3}, SamplingType.RANDOM_SEED),
    ],
)
def test_sampling_type(kwargs, expected):
    params = SamplingParams(**kwargs)
    assert params.sampling_type == expected
    assert params.is_greedy == (expected == SamplingType.GREEDY)


def test_clone_is_independent():
    params = SamplingParams(stop=["x"], temperature=0.5, seed=7)
    copy = params.clone()
    copy.stop.append("y")
    assert params.stop == ["x"]
    assert (
        copy.temperature == 0.5
        and copy.seed == 7
        and copy.sampling_type == (SamplingType.RANDOM_SEED)
    )


def test_repr_shows_fields():
    text = repr(SamplingParams(temperature=0.25, stop="END"))
    assert "temperature=0.25" in text and "'END'" in text


def test_to_options_random():
    params = SamplingParams(
        temperature=0.8,
        top_k=40,
        top_p=0.9,
        min_p=0.05,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        repetition_penalty=1.2,
        min_tokens=3,
        stop_token_ids=[7, 9],
        logprobs=5,
    )
    opts = params.to_options(seed=1234, eos_token_id=2)
    assert isinstance(opts, SamplingOptions)
    assert opts.seed == 1234
    assert (opts.temperature, opts.top_k, opts.top_p, opts.min_p) == (
        0.8,
        40,
        0.9,
        0.05,
    )
    assert (opts.presence_penalty, opts.frequency_penalty) == (0.5, -0.5)
    assert opts.repetition_penalty == 1.2 and opts.min_tokens == 3
    assert opts.banned_ids == [7, 9, 2]
    assert opts.logprobs == 5 and opts.prompt_logprobs == -1
    # Survives the wire format unchanged.
    wire = msgspec.msgpack.encode(opts)
    assert msgspec.msgpack.decode(wire, type=SamplingOptions) == opts


def test_to_options_greedy_and_eos_handling():
    params = SamplingParams(temperature=0.0, top_k=5, prompt_logprobs=2)
    opts = params.to_options(seed=1, eos_token_id=2)
    assert opts.temperature == 0.0
    assert opts.banned_ids == [2] and opts.logprobs == -1 and opts.prompt_logprobs == 2
    ignore = SamplingParams(ignore_eos=True, stop_token_ids=[4]).to_options(1, 2)
    assert ignore.banned_ids == [4]
    assert SamplingParams().to_options(1, None).banned_ids == []
    # EOS listed as a stop token too is banned once.
    assert SamplingParams(stop_token_ids=[2]).to_options(1, 2).banned_ids == [2]


def test_outputs_types():
    lp = {5: Logprob(-0.1, rank=1, decoded_token="hi")}
    out = CompletionOutput(0, "hi", [5], -0.1, [lp])
    assert not out.finished()
    out.finish_reason, out.stop_reason = "stop", "###"
    assert out.finished()
    assert "text='hi'" in repr(out) and "stop_reason='###'" in repr(out)
    req = RequestOutput("r0", "p", [1, 2], [None, lp], [out], finished=True)
    assert req.outputs[0].logprobs[0][5].decoded_token == "hi"
    assert req.prompt_logprobs[0] is None


def test_logit_bias_checked_and_keyed_by_int():
    params = SamplingParams(logit_bias={"5": 1.5, 7: -100})
    assert params.logit_bias == {5: 1.5, 7: -100.0}
    with pytest.raises(ValueError, match=r"\['bad1', 'bad2'\]"):
        SamplingParams(logit_bias={"bad1": 1, "bad2": 2})
    with pytest.raises(
        ValueError, match=r"logit_bias\[3\] must be in \[-100.0, 100.0\]"
    ):
        SamplingParams(logit_bias={3: 101})
    opts = SamplingParams(logit_bias={5: 2.0}, allowed_token_ids=[1, 5]).to_options(
        0, 2
    )
    assert (opts.bias_ids, opts.bias_values, opts.allowed_ids) == ([5], [2.0], [1, 5])
    with pytest.raises(ValueError, match="allowed_token_ids must not be empty"):
        SamplingParams(allowed_token_ids=[])
