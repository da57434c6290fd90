"""A request as the engine process tracks it. The engine owns its status and its
block ids; workers hold their own copy of its tokens."""

import enum
from dataclasses import dataclass, field

from vllm.messages import SamplingOptions


class RequestStatus(enum.Enum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    FINISHED_STOPPED = enum.auto()
    FINISHED_LENGTH = enum.auto()
    FINISHED_ABORTED = enum.auto()

    @property
    def finished(self) -> bool:
        return self.value >= RequestStatus.FINISHED_STOPPED.value

    @property
    def finish_reason(self) -> str | None:
        return {
            RequestStatus.FINISHED_STOPPED: "stop",
            RequestStatus.FINISHED_LENGTH: "length",
            RequestStatus.FINISHED_ABORTED: "abort",
        }.get(self)


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    options: SamplingOptions  # what workers need to sample
    max_tokens: int  # resolved: never past max_model_len
    output_token_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0
    block_ids: list[int] = field(default_factory=list)
    # Prefix caching: prefix_ids[j] names the exact tokens of blocks 0..j, for
    # each full block already computed (see block_manager).
    prefix_ids: list[int] = field(default_factory=list)
    # Blocks the workers already know; None while they do not hold the request
    # (never sent, or evicted by preemption) and it must travel in full.
    num_blocks_sent: int | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids
