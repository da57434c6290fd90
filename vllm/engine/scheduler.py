"""Continuous batching under a token budget.

There are no prefill or decode phases: every scheduled request computes
``num_tokens - num_computed_tokens`` tokens (its whole prompt, a chunk of it, or the
one token sampled last step), within ``max_num_batched_tokens``. Running requests go
first in arrival order; waiting ones are admitted with what budget is left. When KV
blocks run out, the newest running request is preempted: its blocks are freed and it
recomputes from scratch when it is admitted again, ahead of newer arrivals.
"""

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from vllm.config import SchedulerConfig
from vllm.engine.block_manager import BlockManager
from vllm.engine.request import Request, RequestStatus
from vllm.messages import (
    ExecuteModelRequest,
    NewRequest,
    RunningRequest,
    SamplerOutput,
)


@dataclass
class SchedulerOutput:
    request: ExecuteModelRequest  # what the workers receive
    scheduled: list[tuple[Request, int]]  # requests with their token counts

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager):
        self.config = config
        self.block_manager = block_manager
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        # Ids whose worker state must be dropped, sent with the next step.
        self._evicted: list[str] = []
        self.num_preemptions = 0

    def add_request(self, req: Request) -> None:
        self.requests[req.request_id] = req
        self.waiting.append(req)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        scheduled: list[tuple[Request, int]] = []
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            while not self.block_manager.can_append(req, req.num_computed_tokens + n):
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is req:
                    break
            else:
                self.block_manager.allocate(req, req.num_computed_tokens + n)
                scheduled.append((req, n))
                budget -= n
                i += 1
                continue
            break
        # Admitting new work right after preempting would only thrash.
        while not preempted and self.waiting and budget > 0:
            if len(self.running) >= self.config.max_num_seqs:
                break
            req = self.waiting[0]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            # The watermark guards running requests; with none, use every block.
            fits = (
                self.block_manager.can_allocate(req, n)
                if self.running
                else self.block_manager.can_append(req, n)
            )
            if not fits:
                break
            self.waiting.popleft()
            self.block_manager.allocate(req, n)
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            scheduled.append((req, n))
            budget -= n
        return SchedulerOutput(self._make_message(scheduled), scheduled)

    def _make_message(
        self, scheduled: list[tuple[Request, int]]
    ) -> ExecuteModelRequest:
        new, running = [], []
        for req, n in scheduled:
            if req.num_blocks_sent is None:
                new.append(
                    NewRequest(
                        req_id=req.request_id,
                        token_ids=req.all_token_ids,
                        num_prompt_tokens=len(req.prompt_token_ids),
                        block_ids=list(req.block_ids),
                        num_scheduled_tokens=n,
                        sampling=req.options,
                    )
                )
            else:
                running.append(
                    RunningRequest(
                        req.request_id, req.block_ids[req.num_blocks_sent :], n
                    )
                )
            req.num_blocks_sent = len(req.block_ids)
        evicted, self._evicted = self._evicted, []
        return ExecuteModelRequest(new, running, evicted)

    def _preempt(self, req: Request) -> None:
        self.block_manager.free(req)
        req.num_computed_tokens = 0
        req.status = RequestStatus.WAITING
        if req.num_blocks_sent is not None:
            self._evicted.append(req.request_id)
        req.num_blocks_sent = None
        self.waiting.appendleft(req)
        self.num_preemptions += 1

    def update_from_output(
        self, out: SchedulerOutput, sampled: SamplerOutput | None
    ) -> list[Request]:
        """Records computed tokens and sampled tokens; returns the requests that
        received a token, in the worker's order."""
        for req, n in out.scheduled:
            req.num_computed_tokens += n
        if sampled is None:
            return []
        got = []
        for req_id, token in zip(sampled.req_ids, sampled.sampled_token_ids):
            req = self.requests[req_id]
            req.output_token_ids.append(token)
            got.append(req)
        return got

    def finish_requests(self, req_ids: Iterable[str], status: RequestStatus) -> None:
        """Ends requests (stopped, length, aborted) and frees their blocks; ids no
        longer live are skipped."""
        for req_id in req_ids:
            req = self.requests.get(req_id)
            if req is None:
                continue
            if req.status == RequestStatus.RUNNING:
                self.running.remove(req)
            else:
                self.waiting.remove(req)
            req.status = status
            self.block_manager.free(req)
            if req.num_blocks_sent is not None:
                self._evicted.append(req.request_id)
            del self.requests[req.request_id]
