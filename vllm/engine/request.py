"""A request as the engine process tracks it. The engine owns its status and its
block ids; workers hold their own copy of its tokens."""

import enum
from dataclasses import dataclass, field

from vllm.messages import LoRASpec, SamplingOptions


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
    lora: LoRASpec | None = None  # the adapter it runs with; None: base model
    # Tokens sampled by steps still in flight (async scheduling): the workers
    # know them, the engine not yet. Counted in num_tokens so the next step
    # computes them; never sent (the workers feed their own sampled tokens).
    num_pending: int = 0
    # Pipeline stages: the scheduler group it runs in while running.
    group: int = 0
    # Times preempted: tells its current run's tokens from a discarded one's.
    epoch: int = 0
    # Set when first admitted: prompt tokens the prefix cache held, and when
    # (time.monotonic(); for the queue and prefill time metrics).
    num_cached_tokens: int | None = None
    first_scheduled_time: float | None = None

    @property
    def lora_int_id(self) -> int:
        return 0 if self.lora is None else self.lora.lora_int_id

    @property
    def num_tokens(self) -> int:
        """Known tokens plus those pending in steps in flight."""
        return self.num_known_tokens + self.num_pending

    @property
    def num_known_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def has_all_tokens_in_flight(self) -> bool:
        """Every token it may still produce is pending: one more step would
        only compute a token past max_tokens."""
        return len(self.output_token_ids) + self.num_pending >= self.max_tokens

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids
