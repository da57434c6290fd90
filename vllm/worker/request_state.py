"""What a worker remembers about each request between steps, so the engine only
has to send what changed."""

from dataclasses import dataclass

from vllm.messages import ExecuteModelRequest, SamplingOptions


@dataclass
class CachedRequestState:
    req_id: str
    token_ids: list[int]  # prompt then every output sampled so far
    num_prompt_tokens: int
    block_ids: list[int]  # append-only block table
    sampling: SamplingOptions
    num_computed_tokens: int = 0  # tokens whose KV is in the cache


class RequestStates:
    def __init__(self) -> None:
        self.states: dict[str, CachedRequestState] = {}

    def apply(self, req: ExecuteModelRequest) -> list[tuple[CachedRequestState, int]]:
        """Applies one step's delta; returns the scheduled requests with their
        token counts: new requests first, then running ones, each in message
        order."""
        for req_id in req.finished_req_ids:
            self.states.pop(req_id, None)
        scheduled = []
        for new in req.new_requests:
            state = CachedRequestState(
                req_id=new.req_id,
                token_ids=list(new.token_ids),
                num_prompt_tokens=new.num_prompt_tokens,
                block_ids=list(new.block_ids),
                sampling=new.sampling,
                num_computed_tokens=new.num_computed_tokens,
            )
            self.states[new.req_id] = state
            scheduled.append((state, new.num_scheduled_tokens))
        for running in req.running:
            state = self.states[running.req_id]
            state.block_ids.extend(running.new_block_ids)
            scheduled.append((state, running.num_scheduled_tokens))
        return scheduled
