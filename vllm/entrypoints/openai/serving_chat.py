"""/v1/chat/completions (and /v1/chat/completions/batch): the conversation goes
through the chat template (the tokenizer's, --chat-template, or the request's)
and is served like a completion, with OpenAI's chat bodies."""

import time
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from vllm.beam_search import BeamSearchParams
from vllm.engine.async_llm_engine import EngineDeadError, RequestStream
from vllm.entrypoints.openai.protocol import (
    AssistantMessage,
    BatchChatCompletionRequest,
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatStreamChoice,
    DeltaMessage,
    TokenLogprob,
    TopLogprob,
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


class OpenAIServingChat(OpenAIServing):
    def check_chat(self, request: ChatCompletionRequest) -> None:
        self.check_request(request)
        choice = request.tool_choice
        if choice not in (None, "none") and not (
            choice == "auto" and not request.tools
        ):
            raise OpenAIError(
                "`tool_choice` is not supported: tool calling is not supported yet",
                param="tool_choice",
            )
        k = request.top_logprobs
        if k is not None and k < -1:
            raise OpenAIError(
                "`top_logprobs` must be a positive value or -1.", param="top_logprobs"
            )
        if k and not request.logprobs:
            raise OpenAIError(
                "when using `top_logprobs`, `logprobs` must be set to true.",
                param="top_logprobs",
            )
        if request.continue_final_message and request.add_generation_prompt:
            raise OpenAIError(
                "Cannot set both `continue_final_message` and "
                "`add_generation_prompt` to True.",
                param="continue_final_message",
            )

    async def create(self, request: ChatCompletionRequest, raw: Request) -> Response:
        self.check_chat(request)
        prompt = await self.render(request, request.messages)
        request_id = (
            random_id("chatcmpl")
            if request.request_id is None
            else (f"chatcmpl-{request.request_id}")
        )
        if request.use_beam_search:
            body = await self._beam_search(request, request_id, prompt)
            return JSONResponse(body.model_dump())
        params = self.chat_params(request, prompt)
        streams = await self.submit(request_id, [prompt], [params])
        run = _ChatRun(self, request, request_id, prompt)
        if request.stream:
            return StreamingResponse(
                run.stream(streams[0]), media_type="text/event-stream"
            )
        try:
            body = await until_disconnected(raw, run.collect(streams[0]))
        except EngineDeadError as exc:
            raise server_shutting_down(exc) from exc
        return JSONResponse(body.model_dump())

    async def create_batch(
        self, request: BatchChatCompletionRequest, raw: Request
    ) -> Response:
        """Several conversations in one request: one chat.completion whose
        choices are each conversation's, indexed in order; no streaming."""
        if request.stream:
            raise OpenAIError(
                "streaming is not supported for batch chat completions",
                param="stream",
            )
        if not request.messages:
            raise OpenAIError("messages must not be empty", param="messages")
        self.check_chat(request)
        base = (
            random_id("chatcmpl")
            if request.request_id is None
            else (f"chatcmpl-{request.request_id}")
        )
        prompts = [await self.render(request, conv) for conv in request.messages]
        params = [self.chat_params(request, p) for p in prompts]
        streams = await self.submit(base, prompts, params)
        choices, num_prompt, num_out = [], 0, 0
        for i, (prompt, stream) in enumerate(zip(prompts, streams)):
            run = _ChatRun(self, request, base, prompt, request.messages[i])
            try:
                body = await until_disconnected(raw, run.collect(stream))
            except EngineDeadError as exc:
                raise server_shutting_down(exc) from exc
            for choice in body.choices:  # conversation i's choices, in order
                choice.index = len(choices)
                choices.append(choice)
            num_prompt += body.usage.prompt_tokens
            num_out += body.usage.completion_tokens
        # As vLLM: one chat.completion whose choices are the conversations'.
        response = ChatCompletionResponse(
            id=base,
            model=self.model_name,
            choices=choices,
            usage=self.usage(num_prompt, num_out, None),
        )
        return JSONResponse(response.model_dump())

    def chat_params(self, request: ChatCompletionRequest, prompt: dict):
        max_tokens = self.resolve_max_tokens(
            len(prompt["prompt_token_ids"]),
            request.max_completion_tokens or request.max_tokens,
        )
        logprobs = None
        if request.logprobs:
            logprobs = self.whole_vocab(request.top_logprobs or 0)
        prompt_logprobs = request.prompt_logprobs
        if prompt_logprobs is None and request.echo and request.logprobs:
            prompt_logprobs = logprobs
        return self.sampling_params(request, max_tokens, logprobs, prompt_logprobs)

    async def render(self, request: ChatCompletionRequest, messages) -> dict:
        if not messages:
            raise OpenAIError("messages must not be empty", param="messages")
        kwargs = dict(request.chat_template_kwargs or {})
        if request.documents is not None:
            kwargs["documents"] = request.documents
        if request.continue_final_message:
            kwargs["continue_final_message"] = True
        try:
            text = await self.pool.run(
                _apply_template,
                [m.to_template() for m in messages],
                request.chat_template or self.options.chat_template,
                request.add_generation_prompt,
                kwargs,
            )
        except Exception as exc:  # template errors are the request's fault
            raise OpenAIError(
                f"cannot apply the chat template: {exc}", param="messages"
            ) from exc
        special = bool(request.add_special_tokens)
        ids = self.truncate(request, await self.encode(text, special))
        if not ids:
            raise OpenAIError("the rendered conversation is empty", param="messages")
        return {"prompt": text, "prompt_token_ids": ids}

    async def _beam_search(
        self, request: ChatCompletionRequest, request_id: str, prompt: dict
    ) -> ChatCompletionResponse:
        ids = prompt["prompt_token_ids"]
        max_tokens = self.resolve_max_tokens(
            len(ids), request.max_completion_tokens or request.max_tokens
        )
        params = BeamSearchParams(
            beam_width=request.n,
            max_tokens=max_tokens,
            ignore_eos=request.ignore_eos,
            temperature=request.temperature or 0.0,
            length_penalty=request.length_penalty,
            include_stop_str_in_output=request.include_stop_str_in_output,
            skip_special_tokens=request.skip_special_tokens,
        )
        result = await self.beam_search(request_id, ids, params)
        role = response_role(request, request.messages)
        choices = [
            ChatChoice(
                index=i,
                message=AssistantMessage(role=role, content=seq.text),
                finish_reason=seq.finish_reason,
                token_ids=seq.output_tokens if request.return_token_ids else None,
            )
            for i, seq in enumerate(result.sequences)
        ]
        num_out = sum(len(s.output_tokens) for s in result.sequences)
        return ChatCompletionResponse(
            id=request_id,
            model=self.model_name,
            choices=choices,
            usage=self.usage(len(ids), num_out, None),
            prompt_token_ids=ids if request.return_token_ids else None,
        )


def response_role(request: ChatCompletionRequest, messages) -> str:
    """The assistant's, or the last message's when it is being continued."""
    if request.add_generation_prompt or not messages:
        return "assistant"
    return messages[-1].role


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
        prompt: dict,
        messages=None,
    ):
        self.serving = serving
        self.request = request
        self.request_id = request_id
        self.created = int(time.time())
        self.prompt = prompt
        self.num_prompt_tokens = len(prompt["prompt_token_ids"])
        self.as_ids = serving.as_ids(request)
        messages = request.messages if messages is None else messages
        self.role = response_role(request, messages)
        # echo: the last message's text (if it has the response's role) first.
        self.echo = ""
        if request.echo and messages and messages[-1].role == self.role:
            self.echo = messages[-1].text()

    def _logprobs(
        self, token_ids: list[int], positions: list[PositionLogprobs]
    ) -> ChatLogprobs:
        serving = self.serving
        k = serving.whole_vocab(self.request.top_logprobs or 0)
        explicit = bool(self.request.logprob_token_ids)
        content = []
        for tok, position in zip(token_ids, positions):
            chosen = position[tok]
            text = serving.token_str(tok, chosen, self.as_ids)
            if explicit:  # the sampled token and the requested ones
                entries = list(position.items())
            else:
                entries = top_entries(position, k)
            top = []
            for alt, lp in entries:
                alt_text = serving.token_str(alt, lp, self.as_ids)
                top.append(
                    TopLogprob(
                        token=alt_text,
                        logprob=max(lp.logprob, -9999.0),
                        bytes=list(alt_text.encode()),
                    )
                )
            content.append(
                TokenLogprob(
                    token=text,
                    logprob=max(chosen.logprob, -9999.0),
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

    def _chunk(self, choices: list[ChatStreamChoice]) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.request_id,
            created=self.created,
            model=self.serving.model_name,
            choices=choices,
        )

    async def collect(self, stream: RequestStream) -> ChatCompletionResponse:
        final: RequestOutput | None = None
        async for _, out in merge_streams([stream]):
            final = out
        request = self.request
        choices = [
            ChatChoice(
                index=c.index,
                message=AssistantMessage(role=self.role, content=self.echo + c.text),
                logprobs=self._part_logprobs(c, 0),
                finish_reason=c.finish_reason,
                stop_reason=c.stop_reason,
                token_ids=list(c.token_ids) if request.return_token_ids else None,
            )
            for c in final.outputs
        ]
        return ChatCompletionResponse(
            id=self.request_id,
            created=self.created,
            model=self.serving.model_name,
            choices=choices,
            usage=self.serving.usage(
                self.num_prompt_tokens,
                sum(len(c.token_ids) for c in final.outputs),
                final.num_cached_tokens,
            ),
            prompt_logprobs=self.serving.prompt_logprobs_out(final.prompt_logprobs),
            prompt_token_ids=list(final.prompt_token_ids)
            if request.return_token_ids
            else None,
            prompt_text=self.prompt["prompt"] if request.return_prompt_text else None,
        )

    async def stream(self, stream: RequestStream) -> AsyncIterator[str]:
        request = self.request
        final_usage, every_chunk = self.serving.stream_usage(request.stream_options)
        n = request.n
        sent = [(0, 0)] * n  # per choice: (chars, tokens) sent
        finished: set[int] = set()
        cached = None
        try:
            for i in range(n):
                first = self._chunk(
                    [
                        ChatStreamChoice(
                            index=i,
                            delta=DeltaMessage(role=self.role, content=self.echo),
                        )
                    ]
                )
                if request.return_token_ids and i == 0:
                    first.prompt_token_ids = list(self.prompt["prompt_token_ids"])
                if every_chunk:
                    first.usage = self.serving.usage(self.num_prompt_tokens, 0, None)
                yield sse_event(first, exclude_none=True)
            async for _, out in merge_streams([stream]):
                cached = out.num_cached_tokens
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
                                token_ids=list(c.token_ids[tokens:])
                                if request.return_token_ids
                                else None,
                            )
                        ]
                    )
                    sent[c.index] = (len(c.text), len(c.token_ids))
                    if c.finish_reason is not None:
                        finished.add(c.index)
                    if every_chunk:
                        chunk.usage = self.serving.usage(
                            self.num_prompt_tokens, sum(t for _, t in sent), None
                        )
                    yield sse_event(chunk, exclude_none=True)
            if final_usage:
                usage_chunk = self._chunk([])
                usage_chunk.usage = self.serving.usage(
                    self.num_prompt_tokens, sum(t for _, t in sent), cached
                )
                yield sse_event(usage_chunk, exclude_none=True)
        except EngineDeadError as exc:
            yield server_shutting_down(exc).sse()
        yield SSE_DONE
