"""/v1/completions: one or more prompts (text or token ids), n completions each,
streamed as server-sent events or returned whole."""

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from vllm.engine.async_llm_engine import EngineDeadError, RequestStream
from vllm.entrypoints.openai.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    UsageInfo,
    random_id,
)
from vllm.entrypoints.openai.serving_engine import (
    SSE_DONE,
    OpenAIError,
    OpenAIServing,
    merge_streams,
    server_shutting_down,
    sse_event,
    token_text,
    top_entries,
    until_disconnected,
)
from vllm.outputs import CompletionOutput, PositionLogprobs, RequestOutput


class OpenAIServingCompletion(OpenAIServing):
    async def create(self, request: CompletionRequest, raw: Request) -> Response:
        self.check_model(request.model)
        self.check_unsupported(
            request, {"best_of": request.n, "suffix": None, "logit_bias": {}}
        )
        if request.echo and request.logprobs is not None:
            raise OpenAIError("echo with logprobs is not supported", param="echo")
        if request.stream_options is not None and not request.stream:
            raise OpenAIError(
                "stream_options is only allowed with stream=true",
                param="stream_options",
            )
        prompts = await self._prompts(request.prompt)
        params = [
            self.sampling_params(
                request,
                self.resolve_max_tokens(len(p["prompt_token_ids"]), request.max_tokens),
                request.logprobs,
            )
            for p in prompts
        ]
        request_id = random_id("cmpl")
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

    async def _prompts(self, prompt: Any) -> list[dict[str, Any]]:
        if isinstance(prompt, str) or (
            isinstance(prompt, list) and prompt and isinstance(prompt[0], int)
        ):
            prompt = [prompt]
        if not prompt:
            raise OpenAIError("prompt must not be empty", param="prompt")
        out = []
        for item in prompt:
            if isinstance(item, str):
                ids = await self.encode(item)
                out.append({"prompt": item, "prompt_token_ids": ids})
            else:
                out.append({"prompt_token_ids": list(item)})
            if not out[-1]["prompt_token_ids"]:
                raise OpenAIError("prompt must not be empty", param="prompt")
        return out


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

    def _echo(self, prompt_index: int) -> str:
        if not self.request.echo:
            return ""
        prompt = self.prompts[prompt_index]
        text = prompt.get("prompt")
        if text is None:
            text = self.serving.tokenizer.decode(prompt["prompt_token_ids"])
        return text

    def _choice(
        self, prompt_index: int, c: CompletionOutput, sent_text: int, sent_tokens: int
    ) -> CompletionChoice:
        """The part of completion ``c`` after what was already sent."""
        prefix = self._echo(prompt_index) if sent_tokens == 0 and sent_text == 0 else ""
        logprobs = None
        if self.request.logprobs is not None and c.logprobs is not None:
            logprobs = self._logprobs(
                c.token_ids[sent_tokens:],
                c.logprobs[sent_tokens : len(c.token_ids)],
                sent_text,
            )
        return CompletionChoice(
            index=prompt_index * self.request.n + c.index,
            text=prefix + c.text[sent_text:],
            logprobs=logprobs,
            finish_reason=c.finish_reason,
            stop_reason=c.stop_reason,
        )

    def _logprobs(
        self, token_ids: list[int], positions: list[PositionLogprobs], offset: int
    ) -> CompletionLogprobs:
        tokenizer = self.serving.tokenizer
        out = CompletionLogprobs()
        for tok, position in zip(token_ids, positions):
            chosen = position[tok]
            text = token_text(tokenizer, tok, chosen)
            out.tokens.append(text)
            out.token_logprobs.append(chosen.logprob)
            out.text_offset.append(offset)
            offset += len(text)
            top: dict[str, float] = {text: chosen.logprob}
            for alt, lp in top_entries(position, self.request.logprobs):
                top.setdefault(token_text(tokenizer, alt, lp), lp.logprob)
            out.top_logprobs.append(top)
        return out

    def _usage(self, completion_tokens: int) -> UsageInfo:
        return UsageInfo(
            prompt_tokens=self.num_prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=self.num_prompt_tokens + completion_tokens,
        )

    async def collect(self, streams: list[RequestStream]) -> CompletionResponse:
        final: dict[int, RequestOutput] = {}
        async for index, out in merge_streams(streams):
            final[index] = out
        choices = [
            self._choice(i, c, 0, 0) for i in sorted(final) for c in final[i].outputs
        ]
        return CompletionResponse(
            id=self.request_id,
            created=self.created,
            model=self.serving.model_name,
            choices=choices,
            usage=self._usage(
                sum(len(c.token_ids) for o in final.values() for c in o.outputs)
            ),
        )

    async def stream(self, streams: list[RequestStream]) -> AsyncIterator[str]:
        options = self.request.stream_options
        sent: dict[int, tuple[int, int]] = {}  # choice -> (chars, tokens) sent
        finished: set[int] = set()
        try:
            async for index, out in merge_streams(streams):
                for c in out.outputs:
                    key = index * self.request.n + c.index
                    if key in finished:
                        continue
                    chars, tokens = sent.get(key, (0, 0))
                    fresh = len(c.token_ids) > tokens or len(c.text) > chars
                    if not fresh and c.finish_reason is None:
                        continue
                    chunk = CompletionResponse(
                        id=self.request_id,
                        created=self.created,
                        model=self.serving.model_name,
                        choices=[self._choice(index, c, chars, tokens)],
                    )
                    sent[key] = (len(c.text), len(c.token_ids))
                    if c.finish_reason is not None:
                        finished.add(key)
                    if options and options.continuous_usage_stats:
                        chunk.usage = self._usage(sum(t for _, t in sent.values()))
                    yield sse_event(chunk)
            if options and options.include_usage:
                yield sse_event(
                    CompletionResponse(
                        id=self.request_id,
                        created=self.created,
                        model=self.serving.model_name,
                        choices=[],
                        usage=self._usage(sum(t for _, t in sent.values())),
                    )
                )
        except EngineDeadError as exc:
            yield server_shutting_down(exc).sse()
        yield SSE_DONE
