"""/v1/chat/completions: the conversation goes through the chat template (the
tokenizer's, --chat-template, or the request's) and is served like a
completion, with OpenAI's chat bodies."""

import time
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from vllm.engine.async_llm_engine import AsyncLLMEngine, EngineDeadError, RequestStream
from vllm.entrypoints.openai.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatStreamChoice,
    DeltaMessage,
    TokenLogprob,
    TopLogprob,
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
from vllm.entrypoints.openai.tokenizer_pool import TokenizerPool
from vllm.outputs import CompletionOutput, PositionLogprobs


class OpenAIServingChat(OpenAIServing):
    def __init__(
        self,
        engine: AsyncLLMEngine,
        served_model_names: list[str],
        max_model_len: int,
        pool: TokenizerPool,
        chat_template: str | None,
    ):
        super().__init__(engine, served_model_names, max_model_len, pool)
        self.chat_template = chat_template

    async def create(self, request: ChatCompletionRequest, raw: Request) -> Response:
        self.check_model(request.model)
        self.check_unsupported(request, {"logit_bias": {}, "tools": []})
        if request.top_logprobs and not request.logprobs:
            raise OpenAIError("top_logprobs needs logprobs=true", param="top_logprobs")
        if request.stream_options is not None and not request.stream:
            raise OpenAIError(
                "stream_options is only allowed with stream=true",
                param="stream_options",
            )
        prompt = await self._render(request)
        max_tokens = self.resolve_max_tokens(
            len(prompt["prompt_token_ids"]),
            request.max_completion_tokens or request.max_tokens,
        )
        logprobs = (request.top_logprobs or 0) if request.logprobs else None
        params = self.sampling_params(request, max_tokens, logprobs)
        request_id = random_id("chatcmpl")
        streams = await self.submit(request_id, [prompt], [params])
        run = _ChatRun(self, request, request_id, len(prompt["prompt_token_ids"]))
        if request.stream:
            return StreamingResponse(
                run.stream(streams[0]), media_type="text/event-stream"
            )
        try:
            body = await until_disconnected(raw, run.collect(streams[0]))
        except EngineDeadError as exc:
            raise server_shutting_down(exc) from exc
        return JSONResponse(body.model_dump())

    async def _render(self, request: ChatCompletionRequest) -> dict:
        if not request.messages:
            raise OpenAIError("messages must not be empty", param="messages")
        try:
            text = await self.pool.run(
                _apply_template,
                [m.to_template() for m in request.messages],
                request.chat_template or self.chat_template,
                request.add_generation_prompt,
                request.chat_template_kwargs or {},
            )
        except Exception as exc:  # template errors are the request's fault
            raise OpenAIError(
                f"cannot apply the chat template: {exc}", param="messages"
            ) from exc
        ids = await self.encode(text, add_special_tokens=False)
        if not ids:
            raise OpenAIError("the rendered conversation is empty", param="messages")
        return {"prompt": text, "prompt_token_ids": ids}


def _apply_template(tokenizer, messages, template, add_generation_prompt, kwargs):
    return tokenizer.apply_chat_template(
        messages,
        chat_template=template,
        add_generation_prompt=add_generation_prompt,
        tokenize=False,
        **kwargs,
    )


class _ChatRun:
    def __init__(
        self,
        serving: OpenAIServingChat,
        request: ChatCompletionRequest,
        request_id: str,
        num_prompt_tokens: int,
    ):
        self.serving = serving
        self.request = request
        self.request_id = request_id
        self.created = int(time.time())
        self.num_prompt_tokens = num_prompt_tokens

    def _logprobs(
        self, token_ids: list[int], positions: list[PositionLogprobs]
    ) -> ChatLogprobs:
        tokenizer = self.serving.tokenizer
        k = self.request.top_logprobs or 0
        content = []
        for tok, position in zip(token_ids, positions):
            chosen = position[tok]
            text = token_text(tokenizer, tok, chosen)
            top = []
            for alt, lp in top_entries(position, k):
                alt_text = token_text(tokenizer, alt, lp)
                top.append(
                    TopLogprob(
                        token=alt_text,
                        logprob=lp.logprob,
                        bytes=list(alt_text.encode()),
                    )
                )
            content.append(
                TokenLogprob(
                    token=text,
                    logprob=chosen.logprob,
                    bytes=list(text.encode()),
                    top_logprobs=top,
                )
            )
        return ChatLogprobs(content=content)

    def _part_logprobs(
        self, c: CompletionOutput, sent_tokens: int
    ) -> ChatLogprobs | None:
        if not self.request.logprobs or c.logprobs is None:
            return None
        return self._logprobs(
            c.token_ids[sent_tokens:], c.logprobs[sent_tokens : len(c.token_ids)]
        )

    def _usage(self, completion_tokens: int) -> UsageInfo:
        return UsageInfo(
            prompt_tokens=self.num_prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=self.num_prompt_tokens + completion_tokens,
        )

    def _chunk(self, choices: list[ChatStreamChoice]) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.request_id,
            created=self.created,
            model=self.serving.model_name,
            choices=choices,
        )

    async def collect(self, stream: RequestStream) -> ChatCompletionResponse:
        final = None
        async for _, out in merge_streams([stream]):
            final = out
        choices = [
            ChatChoice(
                index=c.index,
                message=AssistantMessage(content=c.text),
                logprobs=self._part_logprobs(c, 0),
                finish_reason=c.finish_reason,
                stop_reason=c.stop_reason,
            )
            for c in final.outputs
        ]
        return ChatCompletionResponse(
            id=self.request_id,
            created=self.created,
            model=self.serving.model_name,
            choices=choices,
            usage=self._usage(sum(len(c.token_ids) for c in final.outputs)),
        )

    async def stream(self, stream: RequestStream) -> AsyncIterator[str]:
        options = self.request.stream_options
        n = self.request.n
        sent = [(0, 0)] * n  # per choice: (chars, tokens) sent
        finished: set[int] = set()
        try:
            for i in range(n):
                yield sse_event(
                    self._chunk(
                        [
                            ChatStreamChoice(
                                index=i,
                                delta=DeltaMessage(role="assistant", content=""),
                            )
                        ]
                    )
                )
            async for _, out in merge_streams([stream]):
                for c in out.outputs:
                    if c.index in finished:
                        continue
                    chars, tokens = sent[c.index]
                    fresh = len(c.token_ids) > tokens or len(c.text) > chars
                    if not fresh and c.finish_reason is None:
                        continue
                    chunk = self._chunk(
                        [
                            ChatStreamChoice(
                                index=c.index,
                                delta=DeltaMessage(content=c.text[chars:]),
                                logprobs=self._part_logprobs(c, tokens),
                                finish_reason=c.finish_reason,
                                stop_reason=c.stop_reason,
                            )
                        ]
                    )
                    sent[c.index] = (len(c.text), len(c.token_ids))
                    if c.finish_reason is not None:
                        finished.add(c.index)
                    if options and options.continuous_usage_stats:
                        chunk.usage = self._usage(sum(t for _, t in sent))
                    yield sse_event(chunk)
            if options and options.include_usage:
                usage_chunk = self._chunk([])
                usage_chunk.usage = self._usage(sum(t for _, t in sent))
                yield sse_event(usage_chunk)
        except EngineDeadError as exc:
            yield server_shutting_down(exc).sse()
        yield SSE_DONE
