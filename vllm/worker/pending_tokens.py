"""Sampled tokens on their way from the output rank, with pipeline stages.

The output rank (the last stage's first) samples each step and sends the tokens to
every other rank point to point. A rank does not wait for them at the end of the
step: stage 0 would then idle until the last stage finished, and the stages could
never overlap. It keeps the step's inputs with the receive in flight and records
the tokens (``ModelRunner.accept``) only when a later step touches one of the
step's requests, in step order, so its request states match the output rank's
before they are read.
"""

from collections import deque
from typing import Any

import torch

from vllm.distributed.parallel_state import PipelineGroup
from vllm.messages import ExecuteModelRequest
from vllm.worker.model_input import ModelInput

# Steps a rank may leave unrecorded before it waits on the oldest anyway: a
# bound on held inputs when steps keep missing each other's requests.
MAX_STEPS_IN_FLIGHT = 8


class PendingTokens:
    def __init__(self, pp: PipelineGroup, accept):
        self.pp = pp
        self.accept = accept  # ModelRunner.accept(inp, tokens, late)
        # (step inputs, request ids, tokens [S], receive handle), oldest first.
        self.steps: deque[tuple[ModelInput, set[str], torch.Tensor, Any]] = deque()
        self.sends: deque[Any] = deque()  # the output rank's sends not known done
        self.max_in_flight = 0  # most steps held at once (overlap happened if > 1)

    def expect(self, inp: ModelInput) -> None:
        """Starts receiving the tokens ``inp`` samples (on a non-output rank)."""
        num = len(inp.sample_states)
        tokens, handle = self.pp.recv_tokens(num) if num else (torch.empty(0), None)
        ids = {state.req_id for state, _ in inp.scheduled}
        self.steps.append((inp, ids, tokens, handle))
        self.max_in_flight = max(self.max_in_flight, len(self.steps))
        while len(self.steps) > MAX_STEPS_IN_FLIGHT:
            self._record_oldest()

    def send(self, tokens: torch.Tensor) -> None:  # [S], on the output rank
        while self.sends and self.sends[0].is_completed():
            self.sends.popleft()
        if len(tokens):
            self.sends.extend(self.pp.send_tokens(tokens))

    def settle_for(self, req: ExecuteModelRequest) -> None:
        """Records every held step up to the last one that shares a request
        with ``req`` (running or evicted), before ``req`` is applied."""
        touched = {r.req_id for r in req.running}
        touched.update(req.finished_req_ids)
        last = -1
        for i, (_, ids, _, _) in enumerate(self.steps):
            if not ids.isdisjoint(touched):
                last = i
        for _ in range(last + 1):
            self._record_oldest()

    def _record_oldest(self) -> None:
        inp, _, tokens, handle = self.steps.popleft()
        if handle is not None:
            handle.wait()
        self.accept(inp, tokens.tolist(), late=True)
