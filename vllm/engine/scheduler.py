"""Continuous batching under a token budget.

There are no prefill or decode phases: every scheduled request computes
``num_tokens - num_computed_tokens`` tokens (its whole prompt, a chunk of it, or the
one token sampled last step), within ``max_num_batched_tokens``. Running requests go
first in arrival order; waiting ones are admitted with what budget is left. When KV
blocks run out, the newest running request is preempted: its blocks are freed and it
recomputes when it is admitted again, ahead of newer arrivals.

With prefix caching, a waiting request starts at the end of its longest cached
prefix (see block_manager) and computes only the rest. A request whose next block
is being computed this step by another request waits one step and reuses it (the n
completions of one prompt share it this way).

With LoRA, at most ``max_loras`` distinct adapters run at once: a waiting request
whose adapter would be one too many stays waiting (those behind it may go).

With pipeline stages (``num_groups`` > 1, one per stage), each running request
belongs to one group, the one whose step admitted it, and a step schedules one
group, the next one in turn that has work. Consecutive steps thus share no
request: stage 0 can compute step N+1 while a later stage still computes step N,
since no token of step N is needed before the group's next turn. A group admits
up to its share of the requests known at the time, and of ``max_num_seqs``.
"""

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from vllm.config import SchedulerConfig
from vllm.engine.block_manager import BlockKey, BlockManager
from vllm.engine.request import Request, RequestStatus
from vllm.logger import init_logger
from vllm.messages import (
    ExecuteModelRequest,
    NewRequest,
    RunningRequest,
    SamplerOutput,
)

logger = init_logger(__name__)


@dataclass
class SchedulerOutput:
    request: ExecuteModelRequest  # what the workers receive
    scheduled: list[tuple[Request, int]]  # requests with their token counts
    # Each scheduled request's Request.epoch when sent: a token of an older
    # epoch belongs to a run that preemption discarded.
    epochs: list[int] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


@dataclass
class PrefixCacheStats:
    # Tokens of every admitted request (its prompt, plus earlier outputs when it
    # resumes after preemption), and how many of them came from the cache.
    queries: int = 0
    hits: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        block_manager: BlockManager,
        max_loras: int | None = None,  # None: LoRA off
        num_groups: int = 1,  # one per overlapping pipeline stage
    ):
        self.config = config
        self.num_groups = num_groups
        self._group_cap = -(-config.max_num_seqs // num_groups)
        self._turn = 0  # the group whose step is next
        self.block_manager = block_manager
        self.max_loras = max_loras
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        # Ids whose worker state must be dropped, sent with the next step.
        self._evicted: list[str] = []
        self.num_preemptions = 0
        self.prefix_cache_stats = PrefixCacheStats()
        self._logged_queries = 0

    def add_request(self, req: Request) -> None:
        self.requests[req.request_id] = req
        self.waiting.append(req)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        scheduled: list[tuple[Request, int]] = []
        for k in range(self.num_groups):
            group = (self._turn + k) % self.num_groups
            self._schedule_group(group, scheduled)
            if scheduled:
                self._turn = group + 1
                break
        message = self._make_message(scheduled)
        self._advance(scheduled)
        return SchedulerOutput(message, scheduled, [r.epoch for r, _ in scheduled])

    def _schedule_group(self, group: int, scheduled: list[tuple[Request, int]]):
        budget = self.config.max_num_batched_tokens
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            if req.group != group or n == 0 or req.has_all_tokens_in_flight:
                i += 1  # another group's turn, or waits for its step in flight
                continue
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
        if not preempted:
            self._admit(scheduled, budget, group)

    @staticmethod
    def _advance(scheduled: list[tuple[Request, int]]) -> None:
        """Counts the scheduled tokens as computed when the step is sent, so the
        next step can be scheduled before this one's output is read. A row that
        reaches the last token samples one, pending until the output arrives."""
        for req, n in scheduled:
            req.num_computed_tokens += n
            if req.num_computed_tokens == req.num_tokens:
                req.num_pending += 1

    def _admit(
        self, scheduled: list[tuple[Request, int]], budget: int, group: int
    ) -> None:
        """Admits waiting requests into ``group`` in order while blocks, budget
        and the group's seats last; one that would recompute a block another
        request computes this step is skipped for this step."""
        bm, i = self.block_manager, 0
        pending = self._pending_keys(scheduled)
        loras = {r.lora_int_id for r in self.running if r.lora}
        seats = len(self.waiting)  # one group: max_num_seqs is the only cap
        if self.num_groups > 1:
            # Each group takes its share of the requests known now, so a burst
            # that one step could admit whole still spreads over the groups.
            share = -(-(len(self.running) + len(self.waiting)) // self.num_groups)
            seats = min(share, self._group_cap)
            seats -= sum(r.group == group for r in self.running)
        while i < len(self.waiting) and budget > 0 and seats > 0:
            if len(self.running) >= self.config.max_num_seqs:
                break
            req = self.waiting[i]
            if not self._lora_fits(req, loras):
                i += 1
                continue
            # Cached positions were never computed, so they have no prompt
            # logprobs: such requests compute their whole prompt.
            cached, missed = (
                bm.lookup(req) if req.options.prompt_logprobs < 0 else ([], None)
            )
            if missed is not None and missed in pending:
                i += 1
                continue
            num_cached = len(cached) * bm.block_size
            n = min(req.num_tokens - num_cached, budget)
            # The watermark guards running requests; with none, use every block.
            fits = bm.can_allocate if self.running else bm.can_append
            if not fits(req, num_cached + n, cached):
                break
            del self.waiting[i]
            bm.allocate(req, num_cached + n, cached)
            req.num_computed_tokens = num_cached
            if req.num_cached_tokens is None:
                req.num_cached_tokens = num_cached
                req.first_scheduled_time = time.monotonic()
            self.prefix_cache_stats.queries += req.num_tokens
            self.prefix_cache_stats.hits += num_cached
            req.status = RequestStatus.RUNNING
            req.group = group
            seats -= 1
            if req.lora:
                loras.add(req.lora_int_id)
            self.running.append(req)
            scheduled.append((req, n))
            budget -= n
            key = bm.next_key(req, num_cached + n)
            if key is not None:
                pending.add(key)

    def _lora_fits(self, req: Request, loras: set[int]) -> bool:
        """Whether req's adapter can join the running ones (``loras``)."""
        if req.lora is None or self.max_loras is None:
            return True
        return req.lora_int_id in loras or len(loras) < self.max_loras

    def _pending_keys(self, scheduled: list[tuple[Request, int]]) -> set[BlockKey]:
        """Keys of the blocks the scheduled requests register after this step."""
        if not self.block_manager.enable_caching:
            return set()
        keys = (
            self.block_manager.next_key(req, req.num_computed_tokens + n)
            for req, n in scheduled
        )
        return {k for k in keys if k is not None}

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
                        num_computed_tokens=req.num_computed_tokens,
                        num_scheduled_tokens=n,
                        sampling=req.options,
                        lora=req.lora,
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
        # A token in flight is dropped: sampling is a pure function of (seed,
        # output index), so recomputing samples the same one again.
        req.num_pending = 0
        req.epoch += 1
        req.status = RequestStatus.WAITING
        if req.num_blocks_sent is not None:
            self._evicted.append(req.request_id)
        req.num_blocks_sent = None
        self.waiting.appendleft(req)
        self.num_preemptions += 1

    def update_from_output(
        self, out: SchedulerOutput, sampled: SamplerOutput | None
    ) -> list[Request]:
        """Records sampled tokens; returns the requests that received one, in
        the worker's order. Under async scheduling, a request that finished or
        was preempted while the step was in flight ignores its token: a
        finished one never shows it, a preempted one samples it again (even if
        it runs again by now, with several steps in flight)."""
        got = []
        if sampled is not None:
            stale = {
                req.request_id
                for (req, _), epoch in zip(out.scheduled, out.epochs)
                if req.epoch != epoch
            }
            for req_id, token in zip(sampled.req_ids, sampled.sampled_token_ids):
                req = self.requests.get(req_id)
                if (
                    req is None
                    or req.status != RequestStatus.RUNNING
                    or req_id in stale
                ):
                    continue
                req.num_pending -= 1
                req.output_token_ids.append(token)
                got.append(req)
        for (req, _), epoch in zip(out.scheduled, out.epochs):
            if req.status == RequestStatus.RUNNING and req.epoch == epoch:
                self.block_manager.cache_full_blocks(req)
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
        if self.block_manager.enable_caching and not self.has_unfinished_requests():
            self._log_prefix_cache_stats()

    def _log_prefix_cache_stats(self) -> None:
        stats = self.prefix_cache_stats
        if stats.queries == self._logged_queries:
            return
        self._logged_queries = stats.queries
        logger.info(
            "Prefix cache hit rate: %.1f%% (%d of %d tokens of admitted requests)",
            100 * stats.hit_rate,
            stats.hits,
            stats.queries,
        )
