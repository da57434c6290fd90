"""Steps on their way to the workers.

Without async scheduling a step is sent and its output read at once. With it, one
step stays in flight: the engine sends step N+1, then reads step N's output, so its
own work (scheduling, output processing, detokenization) overlaps the workers'
forward pass. The scheduler makes that safe (see Request.num_pending): the workers
feed the tokens they sampled themselves, and a request that stopped at step N only
leaves in a later message, its extra token dropped.

With pipeline stages that overlap (async scheduling), each stage beyond the
first keeps one more step in flight, so every stage has a step to compute (the
scheduler gives consecutive steps disjoint request groups).
"""

from collections import deque

from vllm.engine.scheduler import SchedulerOutput
from vllm.executor import Executor
from vllm.executor.executor_base import StepResult
from vllm.messages import ExecuteModelRequest, SamplerOutput

_NOTHING = SchedulerOutput(ExecuteModelRequest([], [], []), [])


class StepQueue:
    def __init__(self, executor: Executor, async_scheduling: bool, groups: int = 1):
        self.executor = executor
        # Steps left in flight once a step's output is read: one per request
        # group beyond the first (overlapping stages), one for async scheduling.
        self.depth = groups - 1 + async_scheduling
        self.in_flight: deque[tuple[SchedulerOutput, StepResult]] = deque()

    def run(
        self, scheduled: SchedulerOutput
    ) -> tuple[SchedulerOutput, SamplerOutput | None]:
        """Sends ``scheduled`` (unless empty) and returns the oldest step whose
        output is due, with that output; nothing while the queue fills."""
        # A step with nothing to compute still goes out when it evicts (the
        # workers' copies of finished requests must not pile up).
        if not scheduled.is_empty or scheduled.request.finished_req_ids:
            result = self.executor.submit_model(scheduled.request)
            self.in_flight.append((scheduled, result))
            if len(self.in_flight) <= self.depth:
                return _NOTHING, None
        if not self.in_flight:
            return _NOTHING, None
        done, result = self.in_flight.popleft()
        return done, result()

    def drain(self) -> list[tuple[SchedulerOutput, SamplerOutput | None]]:
        """Waits for every step in flight, oldest first."""
        done = []
        while self.in_flight:
            scheduled, result = self.in_flight.popleft()
            done.append((scheduled, result()))
        return done
