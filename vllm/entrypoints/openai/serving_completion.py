"""/v1/completions: one or more prompts (text or token ids), n completions each,
streamed as server-sent events or returned whole; or beam search."""

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from vllm.beam_search import BeamSearchParams
from vllm.engine.async_llm_engine import EngineDeadError, RequestStream
from vllm.entrypoints.openai.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    random_id,
)
from vllm.entrypoints.openai.serving_engine import (
    SSE_DONE,
    OpenAIError,
    OpenAIServing,
    merge_streams,
    server_shutting_down,
    sse_event,
    top_entries,
    until_disconnected,
)
from vllm.outputs import CompletionOutput, PositionLogprobs, RequestOutput


class OpenAIServingCompletion(OpenAIServing):
    async def create(self, request: CompletionRequest, raw: Request) -> Response:
        self.check_request(request)
        if request.best_of is not None and request.best_of != request.n:
            raise OpenAIError("best_of is not supported", param="best_of")
        if request.prompt is None:
            raise OpenAIError(
                "Either prompt or prompt_embeds must be provided and non-empty.",
                param="prompt",
            )
        if request.echo and request.max_tokens == 0:
            pass  # only the prompt comes back (one token is computed, not shown)
        elif request.max_tokens is not None and request.max_tokens < 1:
            raise OpenAIError("max_tokens must be >= 1", param="max_tokens")
        prompts = await self._prompts(request)
        request_id = (
            random_id("cmpl")
            if request.request_id is None
            else (f"cmpl-{request.request_id}")
        )
        if request.use_beam_search:
            return JSONResponse(
                (await self._beam_search(request, request_id, prompts)).model_dump()
            )
        logprobs = self.whole_vocab(request.logprobs)
        prompt_logprobs = request.prompt_logprobs
        if request.echo and logprobs is not None:
            prompt_logprobs = max(prompt_logprobs or 0, logprobs)
        params = [
            self.sampling_params(
                request,
                self.resolve_max_tokens(
                    len(p["prompt_token_ids"]), request.max_tokens or 1
                ),
                logprobs,
                prompt_logprobs,
            )
            for p in prompts
        ]
        streams = await self.submit(request_id, prompts, params)
        run = _CompletionRun(self, request, request_id, prompts)
        if request.stream:
            return StreamingResponse(
                run.stream(streams), media_type="text/event-stream"
            )
        try:
            body = await until_disconnected(raw, run.collect(streams))
        except EngineDeadError as exc:
            raise server_shutting_down(exc) from exc
        return JSONResponse(body.model_dump())

    async def _prompts(self, request: CompletionRequest) -> list[dict[str, Any]]:
        prompt = request.prompt
        if isinstance(prompt, str) or (
            isinstance(prompt, list) and prompt and isinstance(prompt[0], int)
        ):
            prompt = [prompt]
        if not prompt:
            raise OpenAIError("prompt must not be empty", param="prompt")
        special = (
            True if request.add_special_tokens is None else request.add_special_tokens
        )
        out = []
        for item in prompt:
            if isinstance(item, str):
                ids = self.truncate(request, await self.encode(item, special))
                out.append({"prompt": item, "prompt_token_ids": ids})
            else:
                out.append({"prompt_token_ids": self.truncate(request, list(item))})
            if not out[-1]["prompt_token_ids"]:
                raise OpenAIError("prompt must not be empty", param="prompt")
        return out

    async def _beam_search(
        self, request: CompletionRequest, request_id: str, prompts: list[dict]
    ) -> CompletionResponse:
        choices, num_prompt, num_out = [], 0, 0
        for i, prompt in enumerate(prompts):
            ids = prompt["prompt_token_ids"]
            max_tokens = self.resolve_max_tokens(len(ids), request.max_tokens)
            params = BeamSearchParams(
                beam_width=request.n,
                max_tokens=max_tokens,
                ignore_eos=request.ignore_eos,
                temperature=request.temperature or 0.0,
                length_penalty=request.length_penalty,
                include_stop_str_in_output=request.include_stop_str_in_output,
                skip_special_tokens=request.skip_special_tokens,
            )
            result = await self.beam_search(f"{request_id}-{i}", ids, params)
            echo = prompt.get("prompt", "") if request.echo else ""
            num_prompt += len(ids)
            for j, seq in enumerate(result.sequences):
                num_out += len(seq.output_tokens)
                choices.append(
                    CompletionChoice(
                        index=i * request.n + j,
                        text=echo + seq.text,
                        finish_reason=seq.finish_reason,
                        token_ids=seq.output_tokens
                        if request.return_token_ids
                        else None,
                        prompt_token_ids=ids if request.return_token_ids else None,
                    )
                )
        return CompletionResponse(
            id=request_id,
            model=self.model_name,
            choices=choices,
            usage=self.usage(num_prompt, num_out, None),
        )


class _CompletionRun:
    """Turns one request's engine outputs into OpenAI completion bodies."""

    def __init__(
        self,
        serving: OpenAIServingCompletion,
        request: CompletionRequest,
        request_id: str,
        prompts: list[dict[str, Any]],
    ):
        self.serving = serving
        self.request = request
        self.request_id = request_id
        self.prompts = prompts
        self.created = int(time.time())
        self.num_prompt_tokens = sum(len(p["prompt_token_ids"]) for p in prompts)
        self.as_ids = serving.as_ids(request)
        self.prompt_only = request.echo and request.max_tokens == 0

    def _prompt_text(self, prompt_index: int) -> str:
        prompt = self.prompts[prompt_index]
        text = prompt.get("prompt")
        if text is None:
            text = self.serving.tokenizer.decode(prompt["prompt_token_ids"])
        return text

    def _choice(
        self,
        prompt_index: int,
        out: RequestOutput,
        c: CompletionOutput,
        sent_text: int,
        sent_tokens: int,
        offset: int,
    ) -> CompletionChoice:
        """The part of completion ``c`` after what was already sent; the first
        part carries the echoed prompt and the prompt's ids."""
        request = self.request
        first = sent_tokens == 0 and sent_text == 0
        token_ids = [] if self.prompt_only else c.token_ids[sent_tokens:]
        positions = (
            []
            if self.prompt_only
            else (c.logprobs or [])[sent_tokens : len(c.token_ids)]
        )
        text = "" if self.prompt_only else c.text[sent_text:]
        prompt_ids = out.prompt_token_ids
        if request.echo and first:
            text = self._prompt_text(prompt_index) + text
            if request.logprobs is not None:
                token_ids = list(prompt_ids) + list(token_ids)
                positions = list(
                    out.prompt_logprobs or [None] * len(prompt_ids)
                ) + list(positions)
        logprobs = None
        if request.logprobs is not None:
            logprobs = self._logprobs(token_ids, positions, offset)
        return CompletionChoice(
            index=prompt_index * request.n + c.index,
            text=text,
            logprobs=logprobs,
            finish_reason=c.finish_reason,
            stop_reason=c.stop_reason,
            token_ids=list(c.token_ids[sent_tokens:])
            if request.return_token_ids
            else None,
            prompt_token_ids=list(prompt_ids)
            if request.return_token_ids and first
            else None,
        )

    def _logprobs(
        self,
        token_ids: list[int],
        positions: list[PositionLogprobs | None],
        offset: int,
    ) -> CompletionLogprobs:
        serving = self.serving
        k = serving.whole_vocab(self.request.logprobs)
        out = CompletionLogprobs()
        for tok, position in zip(token_ids, positions):
            if position is None:  # the prompt's first token has none
                text = serving.token_str(tok, None, self.as_ids)
                out.tokens.append(text)
                out.token_logprobs.append(None)
                out.top_logprobs.append(None)
                out.text_offset.append(offset)
                offset += len(text)
                continue
            chosen = position[tok]
            text = serving.token_str(tok, chosen, self.as_ids)
            out.tokens.append(text)
            out.token_logprobs.append(max(chosen.logprob, -9999.0))
            out.text_offset.append(offset)
            offset += len(text)
            top: dict[str, float] = {text: max(chosen.logprob, -9999.0)}
            entries = (
                [(t, lp) for t, lp in position.items() if t != tok]
                if self.request.logprob_token_ids
                else top_entries(position, k)
            )
            for alt, lp in entries:
                top.setdefault(
                    serving.token_str(alt, lp, self.as_ids), max(lp.logprob, -9999.0)
                )
            out.top_logprobs.append(top)
        return out

    def _end(self, logprobs: CompletionLogprobs | None, offset: int) -> int:
        if logprobs is None or not logprobs.tokens:
            return offset
        return logprobs.text_offset[-1] + len(logprobs.tokens[-1])

    def _num_tokens(self, c: CompletionOutput) -> int:
        return 0 if self.prompt_only else len(c.token_ids)

    async def collect(self, streams: list[RequestStream]) -> CompletionResponse:
        final: dict[int, RequestOutput] = {}
        async for index, out in merge_streams(streams):
            final[index] = out
        choices = []
        for i in sorted(final):
            out = final[i]
            for c in out.outputs:
                choice = self._choice(i, out, c, 0, 0, 0)
                choice.prompt_logprobs = self.serving.prompt_logprobs_out(
                    out.prompt_logprobs
                )
                choices.append(choice)
        cached = [o.num_cached_tokens for o in final.values()]
        return CompletionResponse(
            id=self.request_id,
            created=self.created,
            model=self.serving.model_name,
            choices=choices,
            usage=self.serving.usage(
                self.num_prompt_tokens,
                sum(self._num_tokens(c) for o in final.values() for c in o.outputs),
                None if None in cached else sum(cached),
            ),
        )

    async def stream(self, streams: list[RequestStream]) -> AsyncIterator[str]:
        final_usage, every_chunk = self.serving.stream_usage(
            self.request.stream_options
        )
        sent: dict[int, tuple[int, int, int]] = {}  # choice -> chars, tokens, offset
        finished: set[int] = set()
        cached: dict[int, int | None] = {}
        try:
            async for index, out in merge_streams(streams):
                cached.setdefault(index, out.num_cached_tokens)
                for c in out.outputs:
                    key = index * self.request.n + c.index
                    if key in finished:
                        continue
                    chars, tokens, offset = sent.get(key, (0, 0, 0))
                    fresh = len(c.token_ids) > tokens or len(c.text) > chars
                    if not fresh and c.finish_reason is None:
                        continue
                    choice = self._choice(index, out, c, chars, tokens, offset)
                    chunk = CompletionResponse(
                        id=self.request_id,
                        created=self.created,
                        model=self.serving.model_name,
                        choices=[choice],
                    )
                    sent[key] = (
                        len(c.text),
                        len(c.token_ids),
                        self._end(choice.logprobs, offset),
                    )
                    if c.finish_reason is not None:
                        finished.add(key)
                    if every_chunk:
                        chunk.usage = self.serving.usage(
                            len(out.prompt_token_ids), self._num_tokens(c), None
                        )
                    yield sse_event(chunk, exclude_none=True)
            if final_usage:
                num_out = sum(0 if self.prompt_only else t for _, t, _ in sent.values())
                values = list(cached.values())
                yield sse_event(
                    CompletionResponse(
                        id=self.request_id,
                        created=self.created,
                        model=self.serving.model_name,
                        choices=[],
                        usage=self.serving.usage(
                            self.num_prompt_tokens,
                            num_out,
                            None if None in values else sum(values),
                        ),
                    ),
                    exclude_none=True,
                )
        except EngineDeadError as exc:
            yield server_shutting_down(exc).sse()
        yield SSE_DONE
