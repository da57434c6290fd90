"""Turns sampled tokens into text and ``RequestOutput``s, and decides when a
request is done (EOS, stop tokens, stop strings, max_tokens, max_model_len)."""

from dataclasses import dataclass, field

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
    children: list[Request] = field(default_factory=list)
    prompt_logprobs: list | None = None


@dataclass(eq=False)
class OutputState:
    parent: ParentRequest
    index: int  # which of the parent's n completions
    detokenizer: IncrementalDetokenizer
    logprobs: list[dict[int, Logprob]] | None
    cumulative_logprob: float | None


class OutputProcessor:
    def __init__(self, tokenizer, eos_token_id: int | None, max_model_len: int):
        self.tokenizer = tokenizer
        self.eos_token_id = eos_token_id
        self.max_model_len = max_model_len

    def attach(self, req: Request, parent: ParentRequest, index: int) -> None:
        params = parent.params
        wants = params.logprobs is not None
        req.output_state = OutputState(
            parent=parent,
            index=index,
            detokenizer=IncrementalDetokenizer(
                self.tokenizer, parent.prompt_token_ids, params
            ),
            logprobs=[] if wants else None,
            cumulative_logprob=0.0 if wants else None,
        )
        parent.children.append(req)
        if params.prompt_logprobs is not None:
            parent.prompt_logprobs = [None]

    def process(
        self,
        updated: list[Request],
        sampled: SamplerOutput | None,
        requests: dict[str, Request],  # live requests by id
        finish,  # callable(list[Request], RequestStatus)
    ) -> list[RequestOutput]:
        touched: dict[str, ParentRequest] = {}
        logprobs: dict[str, Logprobs | None] = {}
        if sampled is not None:
            for req_id, chunk in sampled.prompt_logprobs.items():
                state: OutputState = requests[req_id].output_state
                if state.index == 0:
                    self._record_prompt_logprobs(state.parent, chunk)
            logprobs = dict(zip(sampled.req_ids, sampled.logprobs))
        for req in updated:
            state = req.output_state
            self._record_logprobs(state, logprobs.get(req.request_id))
            status = self._check_stop(req, state)
            if status is not None:
                if not isinstance(req.stop_reason, str):
                    state.detokenizer.flush()  # release a held-back partial char
                finish([req], status)
            touched[state.parent.request_id] = state.parent
        return [self.make_output(p) for p in touched.values()]

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
                out[tok] = Logprob(value, rank, self.tokenizer.decode([tok]))
        return out

    def _record_logprobs(self, state: OutputState, lp: Logprobs | None) -> None:
        if lp is None or state.logprobs is None:
            return
        state.logprobs.append(self._to_dict(lp))
        state.cumulative_logprob += lp.logprobs[0]

    def _check_stop(self, req: Request, state: OutputState) -> RequestStatus | None:
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
            req.stop_reason = None if is_eos else token
            return RequestStatus.FINISHED_STOPPED
        stop_str = state.detokenizer.update([token])
        if may_stop and stop_str is not None:
            req.stop_reason = stop_str
            return RequestStatus.FINISHED_STOPPED
        if num_out >= req.max_tokens or req.num_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    def make_output(self, parent: ParentRequest) -> RequestOutput:
        completions = []
        for req in parent.children:
            state: OutputState = req.output_state
            completions.append(
                CompletionOutput(
                    index=state.index,
                    # While running, withhold a tail that may start a stop
                    # string, so streamed text is never taken back.
                    text=state.detokenizer.output_text
                    if req.status.finished
                    else state.detokenizer.stream_text,
                    token_ids=list(req.output_token_ids),
                    cumulative_logprob=state.cumulative_logprob,
                    logprobs=state.logprobs,
                    finish_reason=req.status.finish_reason,
                    stop_reason=req.stop_reason,
                )
            )
        return RequestOutput(
            request_id=parent.request_id,
            prompt=parent.prompt,
            prompt_token_ids=parent.prompt_token_ids,
            prompt_logprobs=parent.prompt_logprobs,
            outputs=completions,
            finished=all(r.status.finished for r in parent.children),
        )
