"""User-facing sampling parameters, validated once when built."""

import copy
import enum
from dataclasses import dataclass, field

from vllm.field_checks import (
    SEED_MAX,
    SEED_MIN,
    check_bool,
    check_float,
    check_int,
    check_int_list,
    check_str_list,
    is_int,
)
from vllm.messages import SamplingOptions

# Below this temperature sampling is indistinguishable from argmax, and dividing
# logits by it would overflow, so it is treated as greedy.
_GREEDY_TEMPERATURE = 1e-5


class SamplingType(enum.IntEnum):
    GREEDY = 0
    RANDOM = 1
    RANDOM_SEED = 2


@dataclass
class SamplingParams:
    """How to sample the completions of one request (same fields as vLLM).

    ``max_tokens=None`` means "until the context is full": the engine resolves it
    against ``max_model_len``. ``top_k=-1`` disables top-k. Limits that depend on
    the engine (``max_logprobs``, the vocabulary, the KV cache's bound on ``n``)
    are checked when the request is added (vllm/engine/input_validation.py).
    """

    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    # token id -> value added to its logit before sampling, in [-100, 100]
    logit_bias: dict[int, float] | None = None
    # Only these tokens may be sampled (the others are masked out).
    allowed_token_ids: list[int] | None = None
    # Return the logprobs of exactly these tokens at each output position (with
    # the sampled one's), instead of the top ``logprobs``.
    logprob_token_ids: list[int] | None = None
    # Derived, not a constructor argument.
    _sampling_type: SamplingType = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Checks every field (the engine checks again, with the model's limits,
        when the request is added: a field may have been changed since)."""
        self._check_numbers()
        self._check_lists_and_flags()
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens ({self.min_tokens}) must be <= max_tokens "
                f"({self.max_tokens})"
            )
        if self.temperature < _GREEDY_TEMPERATURE:
            self._sampling_type = SamplingType.GREEDY
        elif self.seed is not None:
            self._sampling_type = SamplingType.RANDOM_SEED
        else:
            self._sampling_type = SamplingType.RANDOM

    def _check_numbers(self) -> None:
        """Types and ranges; floats must be finite. Stores canonical values
        (float for an int given as a float, int for a numpy integer)."""
        self.n = check_int("n", self.n, low=1)
        self.temperature = check_float("temperature", self.temperature, low=0.0)
        self.top_p = check_float("top_p", self.top_p, 0.0, 1.0, low_open=True)
        self.top_k = check_int("top_k", self.top_k)
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"top_k must be -1 (disabled) or >= 1; got {self.top_k}")
        self.min_p = check_float("min_p", self.min_p, 0.0, 1.0)
        self.repetition_penalty = check_float(
            "repetition_penalty", self.repetition_penalty, low=0.0, low_open=True
        )
        for name in ("presence_penalty", "frequency_penalty"):
            setattr(self, name, check_float(name, getattr(self, name), -2.0, 2.0))
        self.seed = check_int("seed", self.seed, SEED_MIN, SEED_MAX, optional=True)
        self.max_tokens = check_int("max_tokens", self.max_tokens, 1, optional=True)
        self.min_tokens = check_int("min_tokens", self.min_tokens, low=0)
        for name in ("logprobs", "prompt_logprobs"):
            setattr(self, name, check_int(name, getattr(self, name), 0, optional=True))

    def _check_lists_and_flags(self) -> None:
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        else:
            self.stop = check_str_list("stop", self.stop)
        if "" in self.stop:
            # An empty stop string would match before any output exists.
            raise ValueError(f"stop strings must be non-empty; got {self.stop!r}")
        self.stop_token_ids = check_int_list(
            "stop_token_ids", self.stop_token_ids or [], low=0
        )
        self.logit_bias = _check_logit_bias(self.logit_bias)
        if self.allowed_token_ids is not None:
            self.allowed_token_ids = check_int_list(
                "allowed_token_ids", self.allowed_token_ids, low=0
            )
            if not self.allowed_token_ids:
                raise ValueError("allowed_token_ids must not be empty")
        if self.logprob_token_ids is not None:
            self.logprob_token_ids = check_int_list(
                "logprob_token_ids", self.logprob_token_ids, low=0
            )
        for name in (
            "ignore_eos",
            "skip_special_tokens",
            "spaces_between_special_tokens",
            "include_stop_str_in_output",
        ):
            check_bool(name, getattr(self, name))

    def _num_logprobs(self) -> int:
        if self.logprob_token_ids:
            return len(self.logprob_token_ids)
        return -1 if self.logprobs is None else self.logprobs

    @property
    def sampling_type(self) -> SamplingType:
        return self._sampling_type

    @property
    def is_greedy(self) -> bool:
        return self._sampling_type == SamplingType.GREEDY

    def clone(self) -> "SamplingParams":
        return copy.deepcopy(self)

    def to_options(self, seed: int, eos_token_id: int | None) -> SamplingOptions:
        """What workers need to sample; ``seed`` is the effective seed (the
        user's, or one the engine drew when the user gave none)."""
        banned = list(self.stop_token_ids)
        if (
            eos_token_id is not None
            and not self.ignore_eos
            and eos_token_id not in banned
        ):
            banned.append(eos_token_id)
        bias = self.logit_bias or {}
        common = dict(
            seed=seed,
            bias_ids=list(bias),
            bias_values=list(bias.values()),
            allowed_ids=list(self.allowed_token_ids or []),
            logprob_ids=list(self.logprob_token_ids or []),
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            min_tokens=self.min_tokens,
            banned_ids=banned,
            logprobs=self._num_logprobs(),
            prompt_logprobs=-1
            if self.prompt_logprobs is None
            else self.prompt_logprobs,
        )
        if self.is_greedy:
            # Truncation filters cannot change the argmax, so leave them off.
            return SamplingOptions(temperature=0.0, **common)
        return SamplingOptions(
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            **common,
        )


LOGIT_BIAS_RANGE = (-100.0, 100.0)


def _check_logit_bias(bias) -> dict[int, float] | None:
    """Keys are token ids (ints, or strings of digits as JSON sends them);
    every bad key is named at once."""
    if bias is None:
        return None
    if not isinstance(bias, dict):
        raise TypeError(f"logit_bias must be a dict; got {type(bias).__name__}")
    bad = [k for k in bias if not (is_int(k) or (isinstance(k, str) and k.isdigit()))]
    if bad:
        raise ValueError(f"logit_bias keys must be token ids (integers); got {bad!r}")
    low, high = LOGIT_BIAS_RANGE
    out = {}
    for key, value in bias.items():
        out[int(key)] = check_float(f"logit_bias[{key}]", value, low, high)
    return out
