"""User-facing sampling parameters, validated once when built."""

import copy
import enum
from dataclasses import dataclass, field

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
    against ``max_model_len``. ``top_k=-1`` disables top-k.
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
    # Derived, not a constructor argument.
    _sampling_type: SamplingType = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._normalise()
        self._verify_ranges()
        self._verify_lengths()
        if self.temperature < _GREEDY_TEMPERATURE:
            self._sampling_type = SamplingType.GREEDY
        elif self.seed is not None:
            self._sampling_type = SamplingType.RANDOM_SEED
        else:
            self._sampling_type = SamplingType.RANDOM

    def _normalise(self) -> None:
        # Coerce numbers so ints passed for floats (and numpy scalars) behave.
        for name in (
            "presence_penalty",
            "frequency_penalty",
            "repetition_penalty",
            "temperature",
            "top_p",
            "min_p",
        ):
            setattr(self, name, float(getattr(self, name)))
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        else:
            self.stop = [str(s) for s in self.stop]
        if any(s == "" for s in self.stop):
            # An empty stop string would match before any output exists.
            raise ValueError("stop strings must be non-empty")
        self.stop_token_ids = [int(t) for t in self.stop_token_ids or []]

    def _verify_ranges(self) -> None:
        if self.temperature < 0.0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(
                f"top_k must be -1 (disabled) or at least 1, got {self.top_k}"
            )
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0.0:
            raise ValueError(
                f"repetition_penalty must be > 0, got {self.repetition_penalty}"
            )
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -2.0 <= value <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {value}")

    def _verify_lengths(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be >= 0, got {self.min_tokens}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens ({self.min_tokens}) must be <= max_tokens "
                f"({self.max_tokens})"
            )
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")

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
        common = dict(
            seed=seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            min_tokens=self.min_tokens,
            banned_ids=banned,
            logprobs=-1 if self.logprobs is None else self.logprobs,
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
