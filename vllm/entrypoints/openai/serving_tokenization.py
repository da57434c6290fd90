"""/tokenize and /detokenize (vLLM's): a prompt or a conversation (through the
chat template) to token ids, and ids back to text. Off the event loop, like
every tokenization."""

from vllm.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from vllm.entrypoints.openai.serving_chat import OpenAIServingChat
from vllm.entrypoints.openai.serving_engine import OpenAIError
from vllm.field_checks import check_token_ids


class OpenAIServingTokenization(OpenAIServingChat):
    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        self.check_model(request.model)
        if (request.prompt is None) == (request.messages is None):
            raise OpenAIError(
                "give exactly one of `prompt` and `messages`", param="prompt"
            )
        if request.prompt is not None:
            special = request.add_special_tokens
            ids = await self.encode(
                request.prompt, True if special is None else special
            )
        else:
            chat = ChatCompletionRequest(
                messages=request.messages,
                add_generation_prompt=request.add_generation_prompt,
                continue_final_message=request.continue_final_message,
                chat_template=request.chat_template,
                chat_template_kwargs=request.chat_template_kwargs,
                add_special_tokens=request.add_special_tokens,
            )
            ids = (await self.render(chat, request.messages))["prompt_token_ids"]
        strs = None
        if request.return_token_strs:
            strs = await self.pool.run(lambda tok: tok.convert_ids_to_tokens(ids))
        return TokenizeResponse(
            count=len(ids),
            max_model_len=self.max_model_len,
            tokens=ids,
            token_strs=strs,
        )

    async def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        self.check_model(request.model)
        try:
            ids = check_token_ids("tokens", request.tokens, self.vocab_size)
        except ValueError as exc:
            raise OpenAIError(str(exc), param="tokens") from exc
        text = await self.pool.run(lambda tok: tok.decode(ids))
        return DetokenizeResponse(prompt=text)
