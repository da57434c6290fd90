"""What both endpoints share: OpenAI-style errors, model and length checks,
request -> SamplingParams, submitting prompts, merging their streams, logprobs,
and noticing a client that left while a non-streaming request ran."""

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from vllm.beam_search import BeamSearch, BeamSearchOutput, BeamSearchParams
from vllm.engine.async_llm_engine import AsyncLLMEngine, EngineDeadError, RequestStream
from vllm.entrypoints.openai.protocol import (
    ErrorInfo,
    ErrorResponse,
    LogprobInfo,
    PromptLogprobs,
    PromptTokensDetails,
    SamplingFields,
    StreamOptions,
    UsageInfo,
)
from vllm.entrypoints.openai.tokenizer_pool import TokenizerPool
from vllm.outputs import PositionLogprobs, RequestOutput
from vllm.sampling_params import SamplingParams

T = TypeVar("T")


class OpenAIError(Exception):
    """Becomes an OpenAI error body with this HTTP status."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.info = ErrorInfo(message=message, type=type, param=param, code=code)

    def response(self) -> JSONResponse:
        return JSONResponse(
            ErrorResponse(error=self.info).model_dump(), status_code=self.status
        )

    def sse(self) -> str:
        return sse_event(ErrorResponse(error=self.info))


def server_shutting_down(exc: EngineDeadError) -> OpenAIError:
    return OpenAIError(str(exc), status=503, type="service_unavailable")


def sse_event(body: BaseModel | str, exclude_none: bool = False) -> str:
    data = (
        body
        if isinstance(body, str)
        else body.model_dump_json(exclude_none=exclude_none)
    )
    return f"data: {data}\n\n"


SSE_DONE = "data: [DONE]\n\n"


class ClientDisconnected(Exception):
    pass


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Runs ``work``; if the client disconnects first, cancels it (which aborts
    its requests) and raises ClientDisconnected."""
    task = asyncio.ensure_future(work)

    async def client_gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(client_gone())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise ClientDisconnected
    return task.result()


@dataclass(frozen=True)
class ServingOptions:
    """Server flags the endpoints read."""

    return_tokens_as_token_ids: bool = False  # --return-tokens-as-token-ids
    enable_prompt_tokens_details: bool = False  # --enable-prompt-tokens-details
    enable_force_include_usage: bool = False  # --enable-force-include-usage
    chat_template: str | None = None  # --chat-template
    tool_choice_auto: bool = False  # --enable-auto-tool-choice


class OpenAIServing:
    def __init__(
        self,
        engine: AsyncLLMEngine,
        served_model_names: list[str],
        max_model_len: int,
        pool: TokenizerPool,
        options: ServingOptions | None = None,
    ):
        self.options = options or ServingOptions()
        self.vocab_size = engine.model_config.vocab_size
        self.engine = engine
        self.served_model_names = served_model_names
        self.model_name = served_model_names[0]
        self.max_model_len = max_model_len
        # The event loop's tokenizer: only for short work (decoding a token).
        self.tokenizer = engine.get_tokenizer()
        self.pool = pool

    def check_model(self, model: str | None) -> None:
        if model is not None and model not in self.served_model_names:
            raise OpenAIError(
                f"The model `{model}` does not exist; this server serves "
                f"{', '.join(self.served_model_names)}.",
                param="model",
                code="model_not_found",
            )

    def check_request(self, request: SamplingFields) -> None:
        """What every endpoint refuses before any work: an unknown model, a
        field this server does not honour (never accepted and ignored), and
        combinations vLLM refuses."""
        self.check_model(request.model)
        refused = request.refused()
        if refused is not None:
            name, why = refused
            raise OpenAIError(f"`{name}` is not supported: {why}", param=name)
        if request.stream_options is not None and not request.stream:
            raise OpenAIError(
                "stream_options is only allowed with stream=true",
                param="stream_options",
            )
        if request.use_beam_search:
            if request.stream:
                raise OpenAIError(
                    "beam search does not support streaming", param="stream"
                )
            if request.logprob_token_ids:
                raise OpenAIError(
                    "logprob_token_ids is not supported with beam search",
                    param="logprob_token_ids",
                )
        if request.prompt_logprobs is not None:
            if request.stream and request.prompt_logprobs != 0:
                raise OpenAIError(
                    "`prompt_logprobs` are not available when `stream=True`.",
                    param="prompt_logprobs",
                )
            if request.prompt_logprobs < -1:
                raise OpenAIError(
                    "`prompt_logprobs` must be a positive value or -1.",
                    param="prompt_logprobs",
                )

    def whole_vocab(self, k: int | None) -> int | None:
        """-1 (vLLM: every token) -> the vocabulary size."""
        return self.vocab_size if k == -1 else k

    def truncate(self, request: SamplingFields, ids: list[int]) -> list[int]:
        """truncate_prompt_tokens: keep the last k tokens (the first k with
        truncation_side="right"); -1 means max_model_len."""
        k = request.truncate_prompt_tokens
        if k is None:
            return ids
        if k == -1:
            k = self.max_model_len
        if k < 1:
            raise OpenAIError(
                "truncate_prompt_tokens must be >= 1 or -1",
                param="truncate_prompt_tokens",
            )
        if k > self.max_model_len:
            raise OpenAIError(
                f"truncate_prompt_tokens ({k}) must be <= max_model_len "
                f"({self.max_model_len})",
                param="truncate_prompt_tokens",
            )
        return ids[:k] if request.truncation_side == "right" else ids[-k:]

    def token_str(self, token_id: int, logprob, as_ids: bool) -> str:
        """A token in logprobs: its text, or 'token_id:N'."""
        if as_ids:
            return f"token_id:{token_id}"
        return token_text(self.tokenizer, token_id, logprob)

    def as_ids(self, request: SamplingFields) -> bool:
        if request.return_tokens_as_token_ids is None:
            return self.options.return_tokens_as_token_ids
        return request.return_tokens_as_token_ids

    def usage(
        self, prompt_tokens: int, completion_tokens: int, cached: int | None
    ) -> UsageInfo:
        usage = UsageInfo(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )
        if self.options.enable_prompt_tokens_details and cached is not None:
            usage.prompt_tokens_details = PromptTokensDetails(cached_tokens=cached)
        return usage

    def stream_usage(self, options: StreamOptions | None) -> tuple[bool, bool]:
        """(a final usage chunk, usage in every chunk), as vLLM decides."""
        if self.options.enable_force_include_usage:
            return True, True
        if options is None:
            return False, False
        final = bool(options.include_usage)
        return final, final and bool(options.continuous_usage_stats)

    @staticmethod
    def prompt_logprobs_out(
        positions: list[PositionLogprobs | None] | None,
    ) -> PromptLogprobs | None:
        if positions is None:
            return None
        return [
            None
            if p is None
            else {
                t: LogprobInfo(
                    logprob=_finite(lp.logprob),
                    rank=lp.rank,
                    decoded_token=lp.decoded_token,
                )
                for t, lp in p.items()
            }
            for p in positions
        ]

    async def beam_search(
        self, request_id: str, prompt_ids: list[int], params: BeamSearchParams
    ) -> BeamSearchOutput:
        """vllm/beam_search.py driven through the async engine: each step, one
        one-token request per live beam, all at once."""
        search = BeamSearch(
            prompt_ids, params, self.tokenizer.eos_token_id, self.max_model_len
        )
        step = 0
        while not search.done:
            prompts = [{"prompt_token_ids": p} for p in search.step_prompts()]
            one = search.step_params()
            streams = await self.submit(
                f"{request_id}-beam{step}", prompts, [one] * len(prompts)
            )
            final: dict[int, RequestOutput] = {}
            async for index, out in merge_streams(streams):
                final[index] = out
            search.advance(
                [
                    {t: lp.logprob for t, lp in final[i].outputs[0].logprobs[0].items()}
                    for i in range(len(prompts))
                ]
            )
            step += 1
        return search.result(self.tokenizer)

    async def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Tokenizes off the event loop; a text too long for max_model_len by
        its length alone is refused without tokenizing it."""
        least = self.pool.least_tokens(text, self.max_model_len)
        if least is not None:
            raise OpenAIError(
                f"This model's maximum context length is {self.max_model_len} "
                f"tokens. However, your prompt has at least {least} tokens "
                f"({len(text)} characters, at most {self.pool.chars_per_token} "
                "per token). Please reduce the length of the prompt.",
                param="prompt",
                code="context_length_exceeded",
            )
        return await self.pool.run(_encode, text, add_special_tokens)

    def resolve_max_tokens(self, num_prompt_tokens: int, max_tokens: int | None) -> int:
        """Rejects prompts that leave no room and requests that ask for more
        tokens than the context holds, with OpenAI's message."""
        room = self.max_model_len - num_prompt_tokens
        if room <= 0 or (max_tokens is not None and max_tokens > room):
            asked = num_prompt_tokens + (max_tokens or 0)
            raise OpenAIError(
                f"This model's maximum context length is {self.max_model_len} "
                f"tokens. However, you requested {asked} tokens "
                f"({num_prompt_tokens} in the prompt, {max_tokens or 0} for the "
                "completion). Please reduce the length of the prompt or the "
                "completion.",
                param="max_tokens" if room > 0 else "prompt",
                code="context_length_exceeded",
            )
        return room if max_tokens is None else max_tokens

    def sampling_params(
        self,
        request: SamplingFields,
        max_tokens: int,
        logprobs: int | None,
        prompt_logprobs: int | None = None,
    ) -> SamplingParams:
        # The range of logprobs (0 to --max-logprobs) is the engine's to check.
        optional = {
            "temperature": request.temperature,
            "top_p": request.top_p,
            "top_k": request.top_k,
            "min_p": request.min_p,
            "repetition_penalty": request.repetition_penalty,
        }
        try:
            return SamplingParams(
                n=request.n,
                presence_penalty=request.presence_penalty,
                frequency_penalty=request.frequency_penalty,
                seed=request.seed,
                stop=request.stop,
                stop_token_ids=request.stop_token_ids,
                ignore_eos=request.ignore_eos,
                max_tokens=max_tokens,
                min_tokens=request.min_tokens,
                logprobs=logprobs,
                skip_special_tokens=request.skip_special_tokens,
                spaces_between_special_tokens=request.spaces_between_special_tokens,
                include_stop_str_in_output=request.include_stop_str_in_output,
                prompt_logprobs=self.whole_vocab(prompt_logprobs),
                logit_bias=request.logit_bias,
                allowed_token_ids=request.allowed_token_ids,
                logprob_token_ids=request.logprob_token_ids,
                **{k: v for k, v in optional.items() if v is not None},
            )
        except (ValueError, TypeError) as exc:
            raise OpenAIError(str(exc), param=_named_field(str(exc))) from exc

    async def submit(
        self,
        request_id: str,
        prompts: list[dict[str, Any]],
        params: list[SamplingParams],
    ) -> list[RequestStream]:
        """Adds every prompt; if any is rejected, aborts the others and raises
        a 400 (503 when the engine is gone)."""
        adds = [
            self.engine.add_request(f"{request_id}-{i}", prompt, p)
            for i, (prompt, p) in enumerate(zip(prompts, params))
        ]
        results = await asyncio.gather(*adds, return_exceptions=True)
        streams = [r for r in results if isinstance(r, RequestStream)]
        errors = [r for r in results if not isinstance(r, RequestStream)]
        if errors:
            for stream in streams:
                stream.close()
            error = errors[0]
            if isinstance(error, EngineDeadError):
                raise server_shutting_down(error)
            if isinstance(error, ValueError | TypeError):
                raise OpenAIError(str(error), param=_named_field(str(error)))
            raise error
        return streams


async def merge_streams(
    streams: list[RequestStream],
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(prompt index, output) from every stream as they come; closing early
    aborts what is left."""
    if len(streams) == 1:
        try:
            async for out in streams[0]:
                yield 0, out
        finally:
            streams[0].close()
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: RequestStream) -> None:
        try:
            async for out in stream:
                queue.put_nowait((index, out))
        except Exception as exc:
            queue.put_nowait((index, exc))
        else:
            queue.put_nowait((index, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        for stream in streams:
            stream.close()


def _encode(tokenizer, text: str, add_special_tokens: bool) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=add_special_tokens)


def _named_field(message: str) -> str | None:
    """The field a SamplingParams/engine message starts with, if any."""
    head = message.split(" ", 1)[0].split("[", 1)[0]  # stop_token_ids[2] -> ...
    return head if head.isidentifier() else None


def _finite(value: float) -> float:
    """JSON has no -inf: a masked token's logprob becomes the lowest float."""
    return value if math.isfinite(value) else -9999.0


def token_text(tokenizer, token_id: int, logprob) -> str:
    text = getattr(logprob, "decoded_token", None)
    return text if text is not None else tokenizer.decode([token_id])


def top_entries(position: PositionLogprobs, k: int) -> list[tuple[int, Any]]:
    """The k most likely tokens at a position, best first (the chosen token's
    entry carries its true rank, the others their place in the top k)."""
    ranked = sorted(position.items(), key=lambda item: item[1].rank or 0)
    return [(tok, lp) for tok, lp in ranked if lp.rank is not None and lp.rank <= k]
