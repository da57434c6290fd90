"""Property: whatever a user sends, a request either runs to completion with the
right number of tokens, or is refused at the door (a TypeError or ValueError whose
message starts with the name of a field that is really wrong); either way the
engine then serves a good request and its KV cache is entirely free.

Each drawn value is drawn as valid on its own or as wrong, with the exception its
field must raise. Limits that depend on the model or on several fields (the
logprobs cap, the room the prompt leaves, the KV bound on n) are worked out here
from the README's rules, not from the engine's code. Examples are bounded (tiny
model, max_model_len 32) so the whole file takes seconds.
"""

import math
import re

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from vllm import EngineArgs, LLMEngine, SamplingParams

MAX_MODEL_LEN = 32
BLOCK_SIZE = 8
NUM_BLOCKS = 6  # 2 x 3, 3 x 2 and 6 x 1 blocks fill it exactly
MAX_LOGPROBS = 5
VOCAB = 1024
GOOD = {"prompt_token_ids": [10, 20, 30]}
GREEDY = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)


def _floats(low, high):
    return st.floats(low, high, allow_nan=False, allow_infinity=False)


_NON_FINITE = [(math.nan, ValueError), (math.inf, ValueError), (-math.inf, ValueError)]
_NOT_NUMBERS = [("1", TypeError), (None, TypeError), (True, TypeError)]
_NOT_BOOLS = [(1, TypeError), (None, TypeError), ("yes", TypeError)]

FIELDS = {
    "n": (
        # From 2 on, some prompts and max_tokens meet the KV bound.
        st.sampled_from([1, 2, 3, 6, 7, 1, 1, 1, 1]),
        [(0, ValueError), (-1, ValueError), (None, TypeError), (2.0, TypeError)],
    ),
    "temperature": (
        st.sampled_from([0.0, 1e-6]) | _floats(0.0, 2.0),
        [(-0.5, ValueError), *_NON_FINITE, *_NOT_NUMBERS],
    ),
    "top_p": (_floats(0.05, 1.0), [(0.0, ValueError), (1.5, ValueError), *_NON_FINITE]),
    "top_k": (
        st.sampled_from([-1, 1, 5, 5000]),
        [(0, ValueError), (-2, ValueError), (1.5, TypeError)],
    ),
    "min_p": (_floats(0.0, 1.0), [(-0.1, ValueError), (1.1, ValueError), *_NON_FINITE]),
    "presence_penalty": (
        _floats(-2.0, 2.0),
        [(2.5, ValueError), *_NON_FINITE, *_NOT_NUMBERS],
    ),
    "frequency_penalty": (_floats(-2.0, 2.0), [(-3.0, ValueError), *_NON_FINITE]),
    "repetition_penalty": (
        _floats(0.5, 2.0),
        [(0.0, ValueError), (-1.0, ValueError), *_NON_FINITE],
    ),
    "seed": (
        st.none() | st.integers(-(2**63), 2**63 - 1),
        [(2**63, ValueError), (-(2**63) - 1, ValueError), ("7", TypeError)],
    ),
    "stop": (
        st.none()
        | st.text("ab ,.1", min_size=1, max_size=3)
        | st.lists(st.text("ab ,.1", min_size=1, max_size=3), max_size=2),
        [([""], ValueError), ([1], TypeError), (5, TypeError)],
    ),
    "stop_token_ids": (
        # EOS (2) and ids past the vocabulary are refused by the engine only.
        st.none()
        | st.lists(st.sampled_from([2, 17, VOCAB]) | st.integers(0, 1023), max_size=3),
        [([-1], ValueError), (["a"], TypeError), ([True], TypeError), (5, TypeError)],
    ),
    "ignore_eos": (st.booleans(), _NOT_BOOLS),
    "max_tokens": (
        st.none() | st.integers(1, 8),
        [(0, ValueError), (-1, ValueError), (2.5, TypeError), ("4", TypeError)],
    ),
    "min_tokens": (
        st.sampled_from([0, 0, 1, 2, 3, 5, 8, 40]),
        [(-1, ValueError), (None, TypeError), (1.5, TypeError)],
    ),
    "logprobs": (
        st.none() | st.sampled_from([0, 1, 2, MAX_LOGPROBS, MAX_LOGPROBS + 1, 10**5]),
        [(-1, ValueError), (1.5, TypeError)],
    ),
    "prompt_logprobs": (
        st.none() | st.integers(0, MAX_LOGPROBS + 1),
        [(-1, ValueError), (True, TypeError)],
    ),
    "skip_special_tokens": (st.booleans(), _NOT_BOOLS),
    "spaces_between_special_tokens": (st.booleans(), _NOT_BOOLS),
    "include_stop_str_in_output": (st.booleans(), _NOT_BOOLS),
}

_TEXT = st.text("ab ,.1", min_size=1, max_size=12)
_IDS = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=12)
# Prompts valid in form (a text prompt may still tokenize to ids past the
# vocabulary of the tiny model), then prompts wrong whatever the tokenizer says,
# with the field they must be refused for.
VALID_PROMPTS = st.one_of(
    _IDS.map(lambda ids: {"prompt_token_ids": ids}),
    st.tuples(_TEXT, _IDS).map(lambda p: {"prompt": p[0], "prompt_token_ids": p[1]}),
    _TEXT,
    _TEXT.map(lambda text: {"prompt": text}),
)
BAD_PROMPTS = [
    (None, ("prompt", TypeError)),
    (7, ("prompt", TypeError)),
    ("", ("prompt", ValueError)),
    ({"text": "ab"}, ("prompt", ValueError)),
    ({"prompt": None}, ("prompt", TypeError)),
    ({"prompt_token_ids": []}, ("prompt", ValueError)),
    ({"prompt_token_ids": [5] * MAX_MODEL_LEN}, ("prompt", ValueError)),
    ({"prompt_token_ids": [5, VOCAB]}, ("prompt_token_ids", ValueError)),
    ({"prompt_token_ids": [5, -1]}, ("prompt_token_ids", ValueError)),
    ({"prompt_token_ids": [5, 1.0]}, ("prompt_token_ids", TypeError)),
    ({"prompt_token_ids": [True]}, ("prompt_token_ids", TypeError)),
    ({"prompt_token_ids": None}, ("prompt_token_ids", TypeError)),
]


@st.composite
def requests(draw):
    """-> ({field: (value, None or the error it must raise)}, (prompt, None or
    (field, error))), and whether to set the fields after construction. Half
    the requests draw only values valid on their own, so that many run; in the
    others each field is wrong one time in three."""
    clean = draw(st.booleans())
    # n and max_tokens always, for the KV bound that involves both.
    names = [
        name
        for name in FIELDS
        if name in ("n", "max_tokens") or draw(st.integers(0, 3)) == 0
    ]
    tagged = {}
    for name in names:
        valid, invalid = FIELDS[name]
        if clean or draw(st.integers(0, 2)):
            tagged[name] = (draw(valid), None)
        else:
            tagged[name] = draw(st.sampled_from(invalid))
    if clean or draw(st.integers(0, 3)):
        prompt = (draw(VALID_PROMPTS), None)
    else:
        prompt = draw(st.sampled_from(BAD_PROMPTS))
    # Set the fields after construction, past SamplingParams' own checks.
    mutate = draw(st.booleans())
    return tagged, prompt, mutate


@pytest.fixture(scope="module")
def engine(tiny_model):
    args = EngineArgs(
        model=tiny_model("llama_gqa"),
        max_model_len=MAX_MODEL_LEN,
        block_size=BLOCK_SIZE,
        num_gpu_blocks_override=NUM_BLOCKS,
        max_logprobs=MAX_LOGPROBS,
        distributed_executor_backend="uni",
    )
    eng = LLMEngine.from_engine_args(args)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def reference(engine) -> list[int]:
    return _run(engine, "reference", GOOD, GREEDY).outputs[0].token_ids


def _run(engine: LLMEngine, request_id: str, prompt, params):
    engine.add_request(request_id, prompt, params)
    return _drain(engine, request_id)


def _drain(engine: LLMEngine, request_id: str):
    """Steps until idle; -> the last output, which must be request_id's."""
    final = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            assert out.request_id == request_id
            final = out
    return final


_DEFAULTS = SamplingParams()


def _prompt_ids(engine: LLMEngine, prompt) -> list[int]:
    if isinstance(prompt, str) or "prompt_token_ids" not in prompt:
        text = prompt if isinstance(prompt, str) else prompt["prompt"]
        return engine.get_tokenizer().encode(text)
    return prompt["prompt_token_ids"]


def _limit_violations(kwargs: dict, ids: list[int] | None, eos: int) -> set[str]:
    """Fields that break a rule across fields or a limit of this engine, when
    every value is valid on its own; ``ids`` is None for a prompt refused
    anyway."""

    def get(name):
        return kwargs.get(name, getattr(_DEFAULTS, name))

    wrong = set()
    n, max_tokens, min_tokens = get("n"), get("max_tokens"), get("min_tokens")
    if max_tokens is not None and min_tokens > max_tokens:
        wrong.add("min_tokens")
    for name in ("logprobs", "prompt_logprobs"):
        if (get(name) or 0) > MAX_LOGPROBS:
            wrong.add(name)
    stop_ids = get("stop_token_ids") or []
    if any(t >= VOCAB for t in stop_ids) or (get("ignore_eos") and eos in stop_ids):
        wrong.add("stop_token_ids")
    if ids is None:
        return wrong
    room = MAX_MODEL_LEN - len(ids)
    if min_tokens > room:
        wrong.add("min_tokens")
    longest = len(ids) + min(max_tokens or room, room)
    if n * math.ceil(longest / BLOCK_SIZE) > NUM_BLOCKS:
        wrong.add("n")
    return wrong


def _prompt_violation(ids: list[int]) -> str | None:
    if not ids or len(ids) >= MAX_MODEL_LEN:
        return "prompt"
    if any(not 0 <= t < VOCAB for t in ids):
        return "prompt_token_ids"
    return None


def _check_completed(out, params: SamplingParams, prompt_ids: list[int], eos: int):
    room = MAX_MODEL_LEN - len(prompt_ids)
    most = min(params.max_tokens or room, room)
    assert out.finished and out.prompt_token_ids == prompt_ids
    assert sorted(c.index for c in out.outputs) == list(range(params.n))
    for c in out.outputs:
        assert params.min_tokens <= len(c.token_ids) <= most
        if c.finish_reason == "length":
            assert len(c.token_ids) == most and c.stop_reason is None
        else:
            assert c.finish_reason == "stop"
            last = c.token_ids[-1]
            if c.stop_reason is None:
                assert last == eos and not params.ignore_eos
            elif isinstance(c.stop_reason, int):
                assert c.stop_reason == last and last in params.stop_token_ids
            else:
                assert c.stop_reason in params.stop
        if params.logprobs is None:
            assert c.logprobs is None
        else:
            assert len(c.logprobs) == len(c.token_ids)
            for token, entry in zip(c.token_ids, c.logprobs):
                assert token in entry
                assert params.logprobs <= len(entry) <= params.logprobs + 1
    if params.prompt_logprobs is not None:
        assert len(out.prompt_logprobs) == len(prompt_ids)
        assert out.prompt_logprobs[0] is None
    else:
        assert out.prompt_logprobs is None


_FIELD_NAME = re.compile(r"[a-z_]+")


def _ids(length: int) -> dict:
    return {"prompt_token_ids": list(range(100, 100 + length))}


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples in every CI run
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(request=requests())
# Three completions of 8 + 8 tokens fill the 6 blocks exactly; of 9 + 8, they
# cannot fit.
@example(request=({"n": (3, None), "max_tokens": (8, None)}, (_ids(8), None), False))
@example(request=({"n": (3, None), "max_tokens": (8, None)}, (_ids(9), None), True))
def test_accepted_requests_complete_and_refused_ones_name_a_wrong_field(
    engine, reference, request
):
    tagged, (prompt, prompt_error), mutate = request
    # After a failed example (hypothesis reruns them to shrink), start clean.
    engine.abort_request(["drawn", "good"])
    kwargs = {name: value for name, (value, _) in tagged.items()}
    # Each wrong field, with the exception it must raise.
    wrong = {name: error for name, (_, error) in tagged.items() if error}
    ids = None
    if prompt_error is not None:
        wrong.setdefault(*prompt_error)
    else:
        ids = _prompt_ids(engine, prompt)
        if _prompt_violation(ids):
            wrong.setdefault(_prompt_violation(ids), ValueError)
            ids = None
    eos = engine.get_tokenizer().eos_token_id
    if not any(e is not None for _, e in tagged.values()):
        for name in _limit_violations(kwargs, ids, eos):
            wrong.setdefault(name, ValueError)
    try:
        if mutate:
            params = SamplingParams()
            for name, value in kwargs.items():
                setattr(params, name, value)
        else:
            params = SamplingParams(**kwargs)
        engine.add_request("drawn", prompt, params)
    except (TypeError, ValueError) as exc:
        name = _FIELD_NAME.match(str(exc))
        named = name.group() if name else None
        event(f"refused: {named}")  # shown by --hypothesis-show-statistics
        assert named in wrong, f"{exc!r} names no wrong field of {sorted(wrong)}"
        assert type(exc) is wrong[named], f"{exc!r}: want {wrong[named].__name__}"
    else:
        event("accepted")
        assert not wrong, f"accepted, but {sorted(wrong)} are wrong"
        _check_completed(_drain(engine, "drawn"), SamplingParams(**kwargs), ids, eos)
    # Nothing left behind, and the engine still serves.
    assert not engine.has_unfinished_requests()
    assert engine.get_num_unfinished_requests() == 0
    assert engine.scheduler.block_manager.num_free_blocks == engine.num_kv_blocks
    assert _run(engine, "good", GOOD, GREEDY).outputs[0].token_ids == reference
    assert engine.scheduler.block_manager.num_free_blocks == engine.num_kv_blocks
