"""Incremental detokenization and stop-string matching for one sequence.

Re-decoding the whole output every step costs O(length) per token, so this decodes
only a short window of ids: ``_ids[_prefix:]``. The text of ``_ids[_prefix:_read]``
has already been emitted; the text the window adds beyond it is the new text. The
window starts with a few prompt tokens so that tokenizers whose decode drops a
leading space (sentencepiece-style) still give the first output word its space.

A byte-level BPE token may hold only part of a UTF-8 character; decode renders the
incomplete tail as U+FFFD. Such a tail is held back until later tokens complete it
(or ``flush`` releases it when the sequence ends), so emitted text never changes.
"""

from vllm.sampling_params import SamplingParams

# Prompt tokens decoded as context ahead of the output.
_CONTEXT_TOKENS = 5
_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_token_ids: list[int], params: SamplingParams):
        self.tokenizer = tokenizer
        self.params = params
        # spaces_between_special_tokens is kept in SamplingParams for API
        # compatibility only: transformers' fast tokenizers ignore it.
        self._skip_special = params.skip_special_tokens
        self._stops: list[str] = list(params.stop or [])
        self._max_stop_len = max((len(s) for s in self._stops), default=0)

        start = max(0, len(prompt_token_ids) - _CONTEXT_TOKENS)
        context = list(prompt_token_ids[start:])
        if self._decode(context).endswith(_REPLACEMENT):
            # The prompt ends inside a character: its tail would merge with the
            # first output bytes, so decode the output on its own instead.
            context = []
        self._ids: list[int] = context  # context then outputs
        self._prefix = 0  # window start in _ids
        self._read = len(context)  # _ids[_prefix:_read] is already emitted text
        self._partial = 0  # chars of the window's new text already emitted

        self.token_ids: list[int] = []  # output ids so far
        self.output_text = ""
        self.stop_reason: str | None = None  # the stop string that ended output
        self.finished = False  # a stop string matched, or flush() was called

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self._skip_special)

    def update(self, new_token_ids: list[int]) -> str | None:
        """Append output tokens and extend ``output_text``.

        Returns the stop string if one now appears in the output (``output_text``
        is then cut before it, or after it with include_stop_str_in_output, and
        any tokens after the one that completed it are not appended), else None.
        """
        for token_id in new_token_ids:
            if self.finished:
                break
            self._ids.append(token_id)
            self.token_ids.append(token_id)
            old_len = len(self.output_text)
            self.output_text += self._window_delta(final=False)
            stop = self._check_stop(old_len)
            if stop is not None:
                return stop
        return None

    def flush(self) -> str | None:
        """Release any held-back incomplete character (as U+FFFD) at the end of
        the sequence. Call when it finishes for any reason but a stop string.
        Returns a stop string if the released text completes one, else None."""
        if self.finished:
            return None
        old_len = len(self.output_text)
        self.output_text += self._window_delta(final=True)
        stop = self._check_stop(old_len)
        self.finished = True
        return stop

    def _window_delta(self, final: bool) -> str:
        """Text the window adds that was not emitted yet; moves the window on
        once its text ends on a complete character."""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        new_text = text[len(prefix_text) :]
        if not final and new_text.endswith(_REPLACEMENT):
            # Emit what precedes the incomplete tail: bytes before it decode
            # the same whatever follows.
            stable = new_text.rstrip(_REPLACEMENT)
            delta = stable[self._partial :]
            self._partial = max(self._partial, len(stable))
            return delta
        delta = new_text[self._partial :]
        self._prefix, self._read, self._partial = self._read, len(self._ids), 0
        return delta

    def _check_stop(self, old_len: int) -> str | None:
        """Look for a stop string overlapping text added after ``old_len``."""
        if not self._stops or len(self.token_ids) < self.params.min_tokens:
            return None
        text = self.output_text
        start = max(0, old_len - self._max_stop_len + 1)
        best: tuple[int, str] | None = None
        for stop in self._stops:
            index = text.find(stop, start)
            if index != -1 and (best is None or index < best[0]):
                best = (index, stop)
        if best is None:
            return None
        index, stop = best
        if self.params.include_stop_str_in_output:
            index += len(stop)
        self.output_text = text[:index]
        self.stop_reason = stop
        self.finished = True
        return stop

    @property
    def stream_text(self) -> str:
        """The part of ``output_text`` that is final: while the sequence runs, a
        tail that could be the start of a stop string is withheld, since a
        later match would cut it."""
        text = self.output_text
        if self.finished or self.params.include_stop_str_in_output:
            return text
        hold = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), hold, -1):
                if text.endswith(stop[:size]):
                    hold = size
                    break
        return text[: len(text) - hold]
