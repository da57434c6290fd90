"""What the engine hands back to users, shaped as vLLM users expect."""

from dataclasses import dataclass
from typing import Any


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None  # 1 = most likely token in the vocabulary
    decoded_token: str | None = None


# One dict per position: token id -> its logprob. Holds the chosen token and the
# top-k alternatives.
PositionLogprobs = dict[int, Logprob]


@dataclass
class CompletionOutput:
    """One of the ``n`` completions of a request."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[PositionLogprobs] | None
    # "stop" (EOS, stop token or stop string), "length" or "abort"; None while
    # still generating.
    finish_reason: str | None = None
    # The stop string or stop token id that ended generation; None for EOS.
    stop_reason: int | str | None = None

    def finished(self) -> bool:
        return self.finish_reason is not None

    def __repr__(self) -> str:
        return (
            f"CompletionOutput(index={self.index}, text={self.text!r}, "
            f"token_ids={self.token_ids}, "
            f"cumulative_logprob={self.cumulative_logprob}, "
            f"logprobs={self.logprobs}, finish_reason={self.finish_reason}, "
            f"stop_reason={self.stop_reason!r})"
        )


@dataclass
class RequestOutput:
    """The state of one request: its prompt and its completions so far."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    # One entry per prompt position; the first is None (nothing precedes it).
    prompt_logprobs: list[PositionLogprobs | None] | None
    outputs: list[CompletionOutput]
    finished: bool
    lora_request: Any = None  # the LoRARequest it ran with, if any
    # Prompt tokens served from the prefix cache (None until scheduled).
    num_cached_tokens: int | None = None
    # time.monotonic() when it was first scheduled (None until then).
    first_scheduled_time: float | None = None
