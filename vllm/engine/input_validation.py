"""The engine's front door: every request is checked here, against the model and
the KV cache, before anything about it is queued. The OpenAI server calls the same
``LLMEngine.add_request`` and turns ValueError and TypeError into HTTP 400, so each
message names the field, the value and what is allowed.

What a request must satisfy (README, "Limits and errors"):
- ``request_id`` is a string; the prompt is a string, ``{"prompt": str}`` or
  ``{"prompt_token_ids": [int, ...]}`` (with both keys the ids are what the model
  sees and the text is only echoed back); it is not empty, is shorter than
  ``max_model_len`` and its ids are in the vocabulary.
- Every ``SamplingParams`` field is checked again (it may have been changed since it
  was built), and the engine keeps its own checked copy.
- ``logprobs`` and ``prompt_logprobs`` are at most ``max_logprobs``
  (``--max-logprobs``, default 20; -1 allows up to the vocabulary size).
- ``stop_token_ids`` are in the vocabulary, and hold no EOS when ``ignore_eos``.
- ``min_tokens`` fits in the room the prompt leaves in ``max_model_len``; a larger
  ``max_tokens`` is capped at that room (generation ends there with "length", as in
  vLLM's offline engine) and ``max_tokens=None`` means all of it.
- The n completions, each at its longest, fit in the KV cache at once (with prefix
  caching, counting the prompt blocks they share once).
"""

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from vllm.config import VllmConfig
from vllm.field_checks import check_str, check_token_ids, shown
from vllm.sampling_params import SamplingParams

_PROMPT_KEYS = ("prompt", "prompt_token_ids")
_PROMPT_FORMS = "a string, {'prompt': str} or {'prompt_token_ids': [int, ...]}"


@dataclass(frozen=True)
class RequestLimits:
    """What a request is checked against: fixed once the KV cache is sized."""

    max_model_len: int
    vocab_size: int
    max_logprobs: int  # -1: up to the vocabulary size
    eos_token_id: int | None
    block_size: int
    num_kv_blocks: int
    prefix_caching: bool = False  # completions share their prompt's full blocks


@dataclass(frozen=True)
class CheckedRequest:
    prompt: str | None  # the prompt text, if the user gave one
    prompt_token_ids: list[int]
    params: SamplingParams  # the engine's own checked copy
    max_tokens: int  # resolved: never past max_model_len


class InputValidator:
    def __init__(self, limits: RequestLimits, tokenizer: Any):
        self.limits = limits
        self.tokenizer = tokenizer
        self._bound = chars_per_token_bound(tokenizer)

    @classmethod
    def from_config(
        cls, config: VllmConfig, num_kv_blocks: int, tokenizer: Any
    ) -> "InputValidator":
        mc = config.model_config
        limits = RequestLimits(
            max_model_len=mc.max_model_len,
            vocab_size=mc.vocab_size,
            max_logprobs=mc.max_logprobs,
            eos_token_id=tokenizer.eos_token_id,
            block_size=config.cache_config.block_size,
            num_kv_blocks=num_kv_blocks,
            prefix_caching=config.cache_config.enable_prefix_caching,
        )
        return cls(limits, tokenizer)

    def check(self, request_id: Any, prompt: Any, params: Any = None) -> CheckedRequest:
        """Raises TypeError or ValueError for anything the engine cannot run to
        completion; changes no state."""
        check_str("request_id", request_id)
        params = _checked_copy(params)
        text, raw_ids = self._parse_prompt(prompt)
        token_ids = self._check_prompt(raw_ids)
        self._check_logprobs(params)
        self._check_stop_token_ids(params)
        room = self.limits.max_model_len - len(token_ids)
        if params.min_tokens > room:
            raise ValueError(
                f"min_tokens ({params.min_tokens}) is more than the {room} tokens "
                f"left after the prompt ({len(token_ids)} tokens) within "
                f"max_model_len ({self.limits.max_model_len})"
            )
        max_tokens = min(params.max_tokens or room, room)
        self._check_fits_kv_cache(params, len(token_ids), max_tokens)
        return CheckedRequest(text, token_ids, params, max_tokens)

    def _encode(self, text: str) -> list[int]:
        least = prompt_too_long(text, self._bound, self.limits.max_model_len)
        if least is not None:
            raise ValueError(
                f"prompt length (at least {least} tokens: {len(text)} characters, "
                f"a token holds at most {self._bound}) must be shorter than "
                f"max_model_len ({self.limits.max_model_len})"
            )
        return self.tokenizer.encode(text)

    def _parse_prompt(self, prompt: Any) -> tuple[str | None, Any]:
        """-> (text or None, token ids not yet checked)."""
        if isinstance(prompt, str):
            return prompt, self._encode(prompt)
        if not isinstance(prompt, dict):
            raise TypeError(
                f"prompt must be {_PROMPT_FORMS}; got {type(prompt).__name__} "
                f"{shown(prompt)}"
            )
        unknown = [key for key in prompt if key not in _PROMPT_KEYS]
        if unknown or not prompt:
            raise ValueError(
                "prompt dict keys must be 'prompt' and/or 'prompt_token_ids'; "
                f"got keys {shown(list(prompt))}"
            )
        if "prompt_token_ids" not in prompt:
            text = check_str("prompt", prompt["prompt"])
            return text, self._encode(text)
        text = check_str("prompt", prompt.get("prompt"), optional=True)
        return text, prompt["prompt_token_ids"]

    def _check_prompt(self, raw_ids: Any) -> list[int]:
        lim = self.limits
        token_ids = check_token_ids("prompt_token_ids", raw_ids, lim.vocab_size)
        if not token_ids:
            raise ValueError("prompt is empty: prompt_token_ids must not be empty")
        if len(token_ids) >= lim.max_model_len:
            raise ValueError(
                f"prompt length ({len(token_ids)} tokens) must be shorter than "
                f"max_model_len ({lim.max_model_len})"
            )
        return token_ids

    def _check_logprobs(self, params: SamplingParams) -> None:
        lim = self.limits
        if 0 <= lim.max_logprobs < lim.vocab_size:
            cap = lim.max_logprobs
            why = "max_logprobs: raise it with --max-logprobs or LLM(max_logprobs=...)"
        else:
            cap, why = lim.vocab_size, "the vocabulary size"
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(params, name)
            if value is not None and value > cap:
                raise ValueError(f"{name} must be <= {cap} ({why}); got {value}")

    def _check_stop_token_ids(self, params: SamplingParams) -> None:
        lim = self.limits
        ids = params.stop_token_ids
        check_token_ids("stop_token_ids", ids, lim.vocab_size)
        for name in ("allowed_token_ids", "logprob_token_ids"):
            check_token_ids(name, getattr(params, name) or [], lim.vocab_size)
        bias = params.logit_bias or {}
        check_token_ids("logit_bias", sorted(bias), lim.vocab_size)
        if params.ignore_eos and lim.eos_token_id in ids:
            raise ValueError(
                f"stop_token_ids {shown(ids)} holds the EOS token id "
                f"{lim.eos_token_id} while ignore_eos=True: drop one of the two"
            )

    def _check_fits_kv_cache(
        self, params: SamplingParams, prompt_len: int, max_tokens: int
    ) -> None:
        """The scheduler runs the n completions as independent requests, so any
        one of them always fits (the engine refuses to start unless max_model_len
        does). But if all n cannot be held at once they take turns, each preempting
        and recomputing the others, and an n like 100000 makes a request that never
        seems to end. So a request is bounded by what the cache can hold of it at
        once, every completion at its longest (prompt + max_tokens: a future step
        may allocate the last token's slot too); this also bounds n by the number
        of KV blocks. With prefix caching the completions share the prompt's full
        blocks (all but the one holding its last token, which is always
        computed), unless prompt_logprobs makes each compute its whole prompt."""
        lim, n = self.limits, params.n
        per_completion = -(-(prompt_len + max_tokens) // lim.block_size)
        shares = lim.prefix_caching and params.prompt_logprobs is None
        shared = (prompt_len - 1) // lim.block_size if shares else 0
        own = per_completion - shared  # >= 1: the last prompt token's block
        need = shared + n * own
        if need > lim.num_kv_blocks:
            via = f", {shared} prompt blocks shared" if shared else ""
            raise ValueError(
                f"n must be <= {(lim.num_kv_blocks - shared) // own} for this prompt "
                f"and max_tokens; got {n}: {n} completions of up to "
                f"{prompt_len + max_tokens} tokens ({prompt_len} prompt + "
                f"{max_tokens} max_tokens) need {need} KV blocks{via}, but the KV "
                f"cache holds {lim.num_kv_blocks} blocks of {lim.block_size} tokens; "
                "lower n, max_tokens or the prompt, or raise --kv-cache-space"
            )


# Normalizers that never shorten a text: every character survives, possibly
# replaced by one or more characters (a space by a metaspace) or joined by a
# prefix. Anything else (NFC composition, stripping accents) can shrink a text
# and so void the bound below.
_NON_SHRINKING = {"Prepend", "Replace"}


def chars_per_token_bound(tokenizer: Any) -> int | None:
    """The most characters of text one token can stand for, or None where that
    cannot be told from the tokenizer's description alone.

    A fast tokenizer splits the (normalized) text into tokens whose vocabulary
    strings cover it: one character per byte for byte-level BPE, one per
    character for SentencePiece-style vocabularies. So no token covers more
    characters than its vocabulary string is long, and a text of C characters
    has at least C / bound tokens. That fails where text can vanish before or
    while it is split: a shrinking normalizer, an added token that swallows the
    spaces around it (lstrip/rstrip), or unknown characters fused into one
    token."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        spec = json.loads(backend.to_str())
    except Exception:
        return None
    if not _never_shrinks(spec.get("normalizer")):
        return None
    if any(t.get("lstrip") or t.get("rstrip") for t in spec.get("added_tokens", [])):
        return None
    model = spec.get("model") or {}
    if model.get("fuse_unk") and not model.get("byte_fallback"):
        return None
    longest = max((len(key) for key in tokenizer.get_vocab()), default=0)
    return longest or None


def _never_shrinks(normalizer: dict | None) -> bool:
    if normalizer is None:
        return True
    kind = normalizer.get("type")
    if kind == "Sequence":
        return all(_never_shrinks(n) for n in normalizer.get("normalizers", []))
    if kind == "Replace":
        pattern = normalizer.get("pattern", {}).get("String")
        return pattern is not None and len(normalizer.get("content", "")) >= len(
            pattern
        )
    return kind in _NON_SHRINKING


def prompt_too_long(text: str, bound: int | None, max_model_len: int) -> int | None:
    """The least number of tokens ``text`` can have, if that already reaches
    max_model_len (so it can be refused without tokenizing it); else None."""
    if bound is None or len(text) <= bound * (max_model_len - 1):
        return None
    return -(-len(text) // bound)


def _checked_copy(params: Any) -> SamplingParams:
    """A fresh SamplingParams built from the user's fields, so every check runs
    again and later changes to the user's object do not reach the engine."""
    if params is None:
        return SamplingParams()
    if not isinstance(params, SamplingParams):
        raise TypeError(
            "params must be a SamplingParams or None; got "
            f"{type(params).__name__} {shown(params)}"
        )
    fields = dataclasses.fields(params)
    return type(params)(**{f.name: getattr(params, f.name) for f in fields if f.init})
