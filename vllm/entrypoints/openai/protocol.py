"""Request and response bodies of the OpenAI-compatible API (pydantic).

Requests carry every field of vLLM's OpenAI protocol. Each one either works as
in vLLM or, when it holds anything but its default, is refused with a 400 that
names it (``REFUSED``: structured outputs and tools until their own issue,
multimodal and disaggregation fields, ...). Fields outside vLLM's protocol are
ignored, as vLLM does. Value ranges are checked when the request becomes a
``SamplingParams``, which names the bad field.
"""

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, WrapValidator

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- errors, models, usage ----------------------------------------------------------


class ErrorInfo(OpenAIModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(OpenAIModel):
    error: ErrorInfo


class ModelCard(OpenAIModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "vllm"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(OpenAIModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class PromptTokensDetails(OpenAIModel):
    cached_tokens: int | None = None  # prompt tokens the prefix cache held


class UsageInfo(OpenAIModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    # With --enable-prompt-tokens-details.
    prompt_tokens_details: PromptTokensDetails | None = None


class StreamOptions(OpenAIModel):
    include_usage: bool | None = False  # a last chunk with the usage
    # vLLM: usage in every chunk too (only together with include_usage).
    continuous_usage_stats: bool | None = False


# -- requests ---------------------------------------------------------------------

# Fields of vLLM's protocol this server refuses (400 naming the field) unless
# they hold their default. Structured outputs and tools come with issue 25.
REFUSED = {
    "response_format": "structured outputs are not supported yet",
    "structured_outputs": "structured outputs are not supported yet",
    "tools": "tool calling is not supported yet",
    "suffix": "suffix is not supported",
    "watermarking": "watermarking is not supported",
    "bad_words": "bad_words is not supported",
    "prompt_embeds": "prompt embeddings are not supported (--enable-prompt-embeds)",
    "thinking_token_budget": "thinking budgets need a reasoning parser",
    "reasoning_effort": "reasoning_effort needs a reasoning parser",
    "repetition_detection": "repetition_detection is not supported",
    "routed_experts_prompt_start": "routed experts are not supported",
    "return_token_offsets": "return_token_offsets is not supported",
    "mm_payload": "multimodal inputs are not supported",
    "return_mm_kwargs": "multimodal inputs are not supported",
    "media_io_kwargs": "multimodal inputs are not supported",
    "mm_processor_kwargs": "multimodal inputs are not supported",
    "kv_transfer_params": "KV transfer is not supported",
    "ec_transfer_params": "encoder-cache transfer is not supported",
    "vllm_xargs": "vllm_xargs (logits processors' arguments) is not supported",
    "cache_salt": "cache_salt is not supported",
    "priority": "priority scheduling is not enabled",
    "stream_interval": "stream_interval is not supported",
}
# Values of a refused field that ask for nothing (besides None, [], {}, False).
_HARMLESS = {"priority": (0,), "stream_interval": (1,)}


class SamplingFields(OpenAIModel):
    """Fields both endpoints share (OpenAI's, then vLLM's)."""

    model: str | None = None
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None  # informational, as in OpenAI
    # vLLM extras
    use_beam_search: bool = False
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    length_penalty: float = 1.0  # beam search only
    ignore_eos: bool = False
    min_tokens: int = 0
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    truncate_prompt_tokens: int | None = None  # keep the last k (-1: max_model_len)
    truncation_side: Literal["left", "right"] | None = None
    allowed_token_ids: list[int] | None = None
    prompt_logprobs: int | None = None  # -1: the whole vocabulary
    logprob_token_ids: list[int] | None = None
    add_special_tokens: bool | None = None  # default: True (completion), False (chat)
    request_id: str | None = None  # the response id's suffix
    session_id: str | None = None  # informational (routing by the caller)
    return_tokens_as_token_ids: bool | None = None  # default: the server flag
    return_token_ids: bool | None = None
    # Refused unless at their default (REFUSED).
    response_format: Any = None
    structured_outputs: Any = None
    watermarking: Any = None
    bad_words: Any = None
    thinking_token_budget: Any = None
    repetition_detection: Any = None
    routed_experts_prompt_start: Any = None
    return_token_offsets: Any = None
    mm_payload: Any = None
    return_mm_kwargs: Any = None
    kv_transfer_params: Any = None
    ec_transfer_params: Any = None
    vllm_xargs: Any = None
    cache_salt: Any = None
    priority: int = 0
    stream_interval: Any = None

    def refused(self) -> tuple[str, str] | None:
        """(field, why) of the first field set that this server refuses."""
        for name, why in REFUSED.items():
            if name not in type(self).model_fields:
                continue
            value = getattr(self, name)
            harmless = (None, [], {}, False, *_HARMLESS.get(name, ()))
            if not any(value == h and type(value) is type(h) for h in harmless):
                return name, why
        return None


_PROMPT_LISTS = {
    str: TypeAdapter(list[str]),
    list: TypeAdapter(list[list[int]]),
    int: TypeAdapter(list[int]),
}


def _prompt_by_first_item(value: Any, handler) -> Any:
    """Validates a prompt list as the form its first item shows. pydantic's
    smart union would try every form on every item: for 2M token ids (an 8 MB
    body) that took 1.3 s on the event loop, this takes 35 ms."""
    if isinstance(value, list) and value:
        first = type(value[0])
        return _PROMPT_LISTS.get(first, _PROMPT_LISTS[int]).validate_python(value)
    return handler(value)


Prompt = Annotated[
    str | list[str] | list[int] | list[list[int]], WrapValidator(_prompt_by_first_item)
]


class CompletionRequest(SamplingFields):
    prompt: Prompt | None = None
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None
    prompt_embeds: Any = None


class ContentPart(OpenAIModel):
    type: Literal["text"]
    text: str


class ChatMessage(OpenAIModel):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        content = self.content
        if isinstance(content, list):
            return "\n".join(part.text for part in content)
        return content or ""

    def to_template(self) -> dict[str, Any]:
        """The dict a chat template reads: text parts joined."""
        message = {"role": self.role, "content": self.text()}
        if self.name is not None:
            message["name"] = self.name
        return message


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None  # -1: the whole vocabulary
    tools: list[Any] | None = None
    tool_choice: Any = "none"  # only "none" (or "auto" without tools)
    parallel_tool_calls: bool | None = None  # has no effect without tools
    reasoning_effort: Any = None
    include_reasoning: bool = True  # no reasoning parser: nothing to split off
    # vLLM extras
    echo: bool = False  # prepend the last message (of the response's role)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    documents: list[dict[str, Any]] | None = None  # handed to the chat template
    media_io_kwargs: Any = None
    mm_processor_kwargs: Any = None
    return_prompt_text: bool = False


class BatchChatCompletionRequest(ChatCompletionRequest):
    """/v1/chat/completions/batch: one request, several conversations."""

    messages: list[list[ChatMessage]]


class TokenizeRequest(OpenAIModel):
    model: str | None = None
    prompt: str | None = None  # either a prompt
    messages: list[ChatMessage] | None = None  # or a conversation
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: bool = False


class TokenizeResponse(OpenAIModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(OpenAIModel):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(OpenAIModel):
    prompt: str


# -- completion responses ------------------------------------------------------------


class CompletionLogprobs(OpenAIModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class LogprobInfo(OpenAIModel):
    """One token's entry in ``prompt_logprobs`` (keyed by its id)."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


PromptLogprobs = list[dict[int, LogprobInfo] | None]


class CompletionChoice(OpenAIModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    # vLLM: the stop string or token id that ended it (None for EOS)
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None  # return_token_ids
    prompt_logprobs: PromptLogprobs | None = None
    prompt_token_ids: list[int] | None = None  # return_token_ids


class CompletionResponse(OpenAIModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


# -- chat responses -------------------------------------------------------------------


class TopLogprob(OpenAIModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(OpenAIModel):
    content: list[TokenLogprob] | None = None


class AssistantMessage(OpenAIModel):
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[Any] = Field(default_factory=list)


class DeltaMessage(OpenAIModel):
    role: str | None = None
    content: str | None = None


class ChatChoice(OpenAIModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None  # return_token_ids


class ChatCompletionResponse(OpenAIModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    prompt_logprobs: PromptLogprobs | None = None
    prompt_token_ids: list[int] | None = None  # return_token_ids
    prompt_text: str | None = None  # return_prompt_text


class ChatStreamChoice(OpenAIModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None


class ChatCompletionChunk(OpenAIModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]
    usage: UsageInfo | None = None
    prompt_token_ids: list[int] | None = None
