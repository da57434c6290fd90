"""Tokenizing and chat templating off the event loop.

A long prompt takes the tokenizer seconds (about 1.3 s per million characters
here); on the event loop that stalls every stream and every other request. So
the server renders and tokenizes in a few threads. Fast tokenizers refuse to
be used from two threads at once ("Already borrowed"), so each thread has its
own copy. The Rust tokenizer releases the GIL while it encodes, so the loop
keeps answering meanwhile; Jinja rendering is Python and shares the GIL in
slices.

Before any of that, a text that cannot fit ``max_model_len`` is refused from
its length alone where the tokenizer allows it (``chars_per_token_bound``).
"""

import asyncio
import copy
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from vllm.engine.input_validation import chars_per_token_bound, prompt_too_long

T = TypeVar("T")

DEFAULT_THREADS = 2


class TokenizerPool:
    def __init__(self, tokenizer: Any, threads: int = DEFAULT_THREADS):
        self._template = tokenizer
        self._local = threading.local()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="vllm-tok")
        # Most characters one token can cover; None where it cannot be told.
        self.chars_per_token = chars_per_token_bound(tokenizer)

    def _tokenizer(self) -> Any:
        tok = getattr(self._local, "tokenizer", None)
        if tok is None:
            with self._lock:  # deepcopy reads the shared original
                tok = copy.deepcopy(self._template)
            self._local.tokenizer = tok
        return tok

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(tokenizer, *args)`` in a pool thread, with that thread's copy."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, lambda: fn(self._tokenizer(), *args)
        )

    def least_tokens(self, text: str, max_model_len: int) -> int | None:
        """At least how many tokens ``text`` has, when that already reaches
        max_model_len; None when it may fit (or the bound is unknown)."""
        return prompt_too_long(text, self.chars_per_token, max_model_len)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
