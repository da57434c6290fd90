"""Turns sampled tokens into text and ``RequestOutput``s, and decides when a
request is done (EOS, stop tokens, stop strings, max_tokens, max_model_len).

It owns the output side of every live request (what the user submitted, the
detokenizer, logprobs, why it stopped) and returns which requests finished and why;
the engine tells the scheduler. It reads the scheduler's ``Request`` (tokens,
max_tokens) and never changes it.
"""

from dataclasses import dataclass, field
from typing import Any

from vllm.engine.detokenizer import IncrementalDetokenizer
from vllm.engine.request import Request, RequestStatus
from vllm.messages import Logprobs, PromptLogprobs, SamplerOutput
from vllm.outputs import CompletionOutput, Logprob, RequestOutput
from vllm.sampling_params import SamplingParams


@dataclass(eq=False)
class ParentRequest:
    """What the user submitted: n > 1 fans out into n child requests."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    children: list["ChildState"] = field(default_factory=list)
    prompt_logprobs: list | None = None
    lora_request: Any = None  # vllm.lora.request.LoRARequest, if given


@dataclass(eq=False)
class ChildState:
    """The output side of one of a parent's n completions."""

    request: Request  # the scheduler's request (read only here)
    parent: ParentRequest
    index: int  # which of the parent's n completions
    detokenizer: IncrementalDetokenizer
    logprobs: list[dict[int, Logprob]] | None
    cumulative_logprob: float | None
    status: RequestStatus = RequestStatus.RUNNING  # a FINISHED_* once done
    stop_reason: int | str | None = None

    @property
    def finished(self) -> bool:
        return self.status.finished


# What one step finished: status -> the (child) request ids it ended.
Finished = dict[RequestStatus, list[str]]


class OutputProcessor:
    def __init__(self, tokenizer, eos_token_id: int | None, max_model_len: int):
        self.tokenizer = tokenizer
        self.eos_token_id = eos_token_id
        self.max_model_len = max_model_len
        self.parents: dict[str, ParentRequest] = {}  # by user request id
        self._children: dict[str, ChildState] = {}  # by internal request id
        # Text of single tokens, for logprobs: bounded by the vocabulary.
        self._token_text: dict[int, str] = {}

    def add_request(self, parent: ParentRequest, children: list[Request]) -> None:
        params = parent.params
        wants = params.logprobs is not None
        for index, req in enumerate(children):
            state = ChildState(
                request=req,
                parent=parent,
                index=index,
                detokenizer=IncrementalDetokenizer(
                    self.tokenizer, parent.prompt_token_ids, params
                ),
                logprobs=[] if wants else None,
                cumulative_logprob=0.0 if wants else None,
            )
            parent.children.append(state)
            self._children[req.request_id] = state
        if params.prompt_logprobs is not None:
            parent.prompt_logprobs = [None]
        self.parents[parent.request_id] = parent

    def abort(self, request_id: str) -> list[str]:
        """Forgets a user request; returns its children's ids (to free)."""
        parent = self.parents.pop(request_id, None)
        if parent is None:
            return []
        for child in parent.children:
            self._children.pop(child.request.request_id, None)
        return [c.request.request_id for c in parent.children]

    def process(
        self,
        updated: list[Request],  # requests that received a token this step
        sampled: SamplerOutput | None,
    ) -> tuple[list[RequestOutput], Finished]:
        touched: dict[str, ParentRequest] = {}
        logprobs: dict[str, Logprobs | None] = {}
        finished: Finished = {}
        if sampled is not None:
            for req_id, chunk in sampled.prompt_logprobs.items():
                state = self._children.get(req_id)
                if state is not None and state.index == 0:
                    self._record_prompt_logprobs(state.parent, chunk)
            logprobs = dict(zip(sampled.req_ids, sampled.logprobs))
        for req in updated:
            state = self._children.get(req.request_id)
            if state is None or state.finished:
                continue
            self._record_logprobs(state, logprobs.get(req.request_id))
            status = self._check_stop(state)
            if status is not None:
                if not isinstance(state.stop_reason, str):
                    state.detokenizer.flush()  # release a held-back partial char
                state.status = status
                finished.setdefault(status, []).append(req.request_id)
            touched[state.parent.request_id] = state.parent
        outputs = [self._make_output(p) for p in touched.values()]
        for out in outputs:
            if out.finished:
                self.abort(out.request_id)  # done: nothing left to track
        return outputs, finished

    def _record_prompt_logprobs(
        self, parent: ParentRequest, chunk: PromptLogprobs
    ) -> None:
        """Places a chunk by position: a request recomputed after preemption
        sends positions it already sent, which are skipped."""
        known = parent.prompt_logprobs
        for pos, lp in enumerate(chunk.entries, start=chunk.start):
            if pos == len(known):
                known.append(self._to_dict(lp))

    def _to_dict(self, lp: Logprobs) -> dict[int, Logprob]:
        out: dict[int, Logprob] = {}
        for pos, (tok, value) in enumerate(zip(lp.token_ids, lp.logprobs)):
            if tok not in out:
                rank = lp.rank if pos == 0 else pos
                out[tok] = Logprob(value, rank, self._decode_token(tok))
        return out

    def _decode_token(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id])
            self._token_text[token_id] = text
        return text

    def _record_logprobs(self, state: ChildState, lp: Logprobs | None) -> None:
        if lp is None or state.logprobs is None:
            return
        state.logprobs.append(self._to_dict(lp))
        state.cumulative_logprob += lp.logprobs[0]

    def _check_stop(self, state: ChildState) -> RequestStatus | None:
        req = state.request
        token = req.output_token_ids[-1]
        params = state.parent.params
        num_out = len(req.output_token_ids)
        may_stop = num_out >= params.min_tokens
        is_eos = token == self.eos_token_id and not params.ignore_eos
        if may_stop and (is_eos or token in params.stop_token_ids):
            # As in vLLM, the stopping token's text is left out of the output
            # unless include_stop_str_in_output asks for it.
            if params.include_stop_str_in_output:
                state.detokenizer.update([token])
            state.stop_reason = None if is_eos else token
            return RequestStatus.FINISHED_STOPPED
        stop_str = state.detokenizer.update([token])
        if may_stop and stop_str is not None:
            state.stop_reason = stop_str
            return RequestStatus.FINISHED_STOPPED
        if num_out >= req.max_tokens or req.num_known_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    def _make_output(self, parent: ParentRequest) -> RequestOutput:
        first = parent.children[0].request
        completions = []
        for state in parent.children:
            completions.append(
                CompletionOutput(
                    index=state.index,
                    # While running, withhold a tail that may start a stop
                    # string, so streamed text is never taken back.
                    text=state.detokenizer.output_text
                    if state.finished
                    else state.detokenizer.stream_text,
                    token_ids=list(state.request.output_token_ids),
                    cumulative_logprob=state.cumulative_logprob,
                    logprobs=state.logprobs,
                    finish_reason=state.status.finish_reason,
                    stop_reason=state.stop_reason,
                )
            )
        return RequestOutput(
            request_id=parent.request_id,
            prompt=parent.prompt,
            prompt_token_ids=parent.prompt_token_ids,
            prompt_logprobs=parent.prompt_logprobs,
            outputs=completions,
            finished=all(c.finished for c in parent.children),
            lora_request=parent.lora_request,
            num_cached_tokens=first.num_cached_tokens,
            first_scheduled_time=first.first_scheduled_time,
        )
