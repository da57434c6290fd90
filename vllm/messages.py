"""The boundary between the engine process and the workers.

The engine and the workers never import each other; both import this module. Each
step the engine sends one ``ExecuteModelRequest`` to every rank and reads back one
``SamplerOutput``. The request is a delta: a request's full data travels once (when it
is first scheduled, or again after preemption) and afterwards only what changed, so a
decode step costs a few bytes per sequence whatever the context length. Workers keep
each request's tokens, block table and sampling state.

Every message is a msgspec struct of ints, floats, strings and lists, so the codec at
the bottom turns it into compact bytes for any transport.
"""

import msgspec


class SamplingOptions(msgspec.Struct, array_like=True, omit_defaults=True):
    """What a worker needs to sample for one request (engine-side stop strings,
    detokenization and n stay in the engine)."""

    seed: int  # sampling is a pure function of (seed, output index): see sampler
    temperature: float = 1.0  # 0 means greedy
    top_k: int = -1  # -1 disables
    top_p: float = 1.0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0  # banned_ids stay masked until this many outputs exist
    banned_ids: list[int] = []  # EOS (unless ignore_eos) and stop_token_ids
    logprobs: int = -1  # top-k logprobs per sampled token; -1 means none
    prompt_logprobs: int = -1  # top-k logprobs per prompt position; -1 means none
    # logit_bias: bias_values[i] is added to the logit of token bias_ids[i]. It
    # travels here, in NewRequest, once; the worker keeps it with the request.
    bias_ids: list[int] = []
    bias_values: list[float] = []
    allowed_ids: list[int] = []  # if any, every other token is masked out
    # If any: logprobs of exactly these tokens (after the sampled one) instead
    # of the top ``logprobs``.
    logprob_ids: list[int] = []


class LoRASpec(msgspec.Struct, array_like=True, frozen=True):
    """A LoRA adapter as workers load it: from a PEFT folder on their machine."""

    lora_int_id: int  # >= 1, unique per adapter; what batches and caches key on
    lora_name: str
    lora_path: str  # folder with adapter_config.json and adapter_model.safetensors


class NewRequest(msgspec.Struct, array_like=True):
    """A request sent in full: first scheduling, or resumption after preemption
    (the worker then drops any state it held under this id)."""

    req_id: str
    token_ids: list[int]  # prompt followed by any outputs generated before preemption
    num_prompt_tokens: int  # how many of token_ids are the prompt
    block_ids: list[int]  # KV blocks holding the request, in order
    # Tokens whose KV the first blocks already hold (a prefix-cache hit; 0
    # without one): computing starts at this position.
    num_computed_tokens: int
    num_scheduled_tokens: int  # tokens to compute this step, after those computed
    sampling: SamplingOptions
    # The adapter the request runs with, None for the base model. It travels
    # here only, so a decode step never repeats it.
    lora: LoRASpec | None = None


class RunningRequest(msgspec.Struct, array_like=True):
    """A request the workers already hold: only what changed since last step."""

    req_id: str
    new_block_ids: list[int]  # appended to the worker's block table
    num_scheduled_tokens: int  # tokens to compute this step, after those computed


class ExecuteModelRequest(msgspec.Struct, array_like=True):
    """One step. Workers apply finished_req_ids first, then the new requests."""

    new_requests: list[NewRequest]
    running: list[RunningRequest]
    finished_req_ids: list[str]  # finished, aborted or preempted: evict worker state


class Logprobs(msgspec.Struct, array_like=True):
    """Logprobs at one position."""

    token_ids: list[int]  # the chosen token first, then the top-k tokens
    logprobs: list[float]  # parallel to token_ids
    rank: int  # rank of the chosen token in the vocabulary, 1 = most likely


class PromptLogprobs(msgspec.Struct, array_like=True):
    """Logprobs of a run of prompt positions computed in one step."""

    start: int  # index in the prompt of the token entries[0] scores (>= 1)
    entries: list[Logprobs]


class SamplerOutput(msgspec.Struct, array_like=True):
    """What rank 0 returns for one step. Requests still in a partial prefill
    produced no token and are absent from req_ids."""

    req_ids: list[str]  # requests that sampled a token this step, batch order
    sampled_token_ids: list[int]  # parallel to req_ids
    logprobs: list[Logprobs | None]  # parallel to req_ids; None if not asked
    # req_id -> logprobs of the prompt positions computed this step; position 0
    # (which has no logprob) is never included.
    prompt_logprobs: dict[str, PromptLogprobs] = {}


_REQUEST_ENCODER = msgspec.msgpack.Encoder()
_REQUEST_DECODER = msgspec.msgpack.Decoder(ExecuteModelRequest)
_OUTPUT_DECODER = msgspec.msgpack.Decoder(SamplerOutput | None)


def encode(msg: ExecuteModelRequest | SamplerOutput | None) -> bytes:
    return _REQUEST_ENCODER.encode(msg)


def decode_request(data: bytes) -> ExecuteModelRequest:
    return _REQUEST_DECODER.decode(data)


def decode_output(data: bytes) -> SamplerOutput | None:
    return _OUTPUT_DECODER.decode(data)
