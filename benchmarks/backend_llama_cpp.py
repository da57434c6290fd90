"""``--backend llama.cpp``: the same prompts through llama.cpp (llama-cpp-python's
low-level API) on a GGUF of the same weights, for side-by-side numbers.

Batched decoding as llama.cpp's own examples do it: one sequence id per prompt,
all prompts' tokens packed into ``llama_decode`` batches (llama.cpp splits them
into micro-batches), then one batch per step holding the last token of every
sequence. Each sequence is sampled from its own logits row by llama.cpp's
sampler (greedy at temperature 0, else temperature + seeded random draw); EOS
does not stop a sequence. llama-cpp-python is an optional benchmark dependency:
``pip install -r requirements/bench-llamacpp.txt -c requirements/cpu.txt``.
"""

import argparse
import os
from typing import Any

from gguf_export import DTYPES, cached_gguf


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--gguf-dtype",
        choices=sorted(DTYPES),
        default="f32",
        help="llama.cpp backend: GGUF written from --model's weights in this dtype",
    )
    add(
        "--gguf-file",
        default=None,
        help="llama.cpp backend: use this GGUF instead of writing one",
    )
    add(
        "--llama-cpp-threads",
        type=int,
        default=os.cpu_count() or 1,
        help="llama.cpp backend: threads (default: the machine's cores)",
    )
    add(
        "--llama-cpp-max-seqs",
        type=int,
        default=256,
        help="llama.cpp backend: sequences decoded together (llama.cpp's limit "
        "is 256); more prompts run in waves",
    )


def import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as e:
        raise SystemExit(
            "--backend llama.cpp needs llama-cpp-python: pip install -r "
            "requirements/bench-llamacpp.txt -c requirements/cpu.txt"
        ) from e
    return llama_cpp


class LlamaCppRunner:
    """One llama.cpp model and context sized for ``max_seqs`` sequences of up to
    ``max_len`` tokens each; ``generate`` may be called repeatedly."""

    def __init__(self, gguf_path: str, max_seqs: int, max_len: int, threads: int):
        self.ll = ll = import_llama_cpp()
        ll.llama_backend_init()
        global _LOG_CALLBACK
        if _LOG_CALLBACK is None:
            _LOG_CALLBACK = ll.llama_log_callback(_quiet_log)
        ll.llama_log_set(_LOG_CALLBACK, None)
        self.model = ll.llama_model_load_from_file(
            gguf_path.encode(), ll.llama_model_default_params()
        )
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf_path}")
        params = ll.llama_context_default_params()
        self.max_seqs = min(max_seqs, ll.llama_max_parallel_sequences())
        params.n_seq_max = self.max_seqs
        # Not unified: every sequence gets its own n_ctx / n_seq_max cells and
        # attends only to them, as each request has its own blocks in the engine.
        params.kv_unified = False
        params.n_ctx = self.max_seqs * max_len
        params.n_threads = params.n_threads_batch = threads
        self.n_batch = params.n_batch
        self.ctx = ll.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.batch = ll.llama_batch_init(max(self.n_batch, self.max_seqs), 0, 1)

    def close(self) -> None:
        ll = self.ll
        ll.llama_batch_free(self.batch)
        ll.llama_free(self.ctx)
        ll.llama_model_free(self.model)

    def _sampler(self, temperature: float, seed: int) -> Any:
        ll = self.ll
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        if temperature > 0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(temperature))
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(seed))
        else:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
        return chain

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """entries: (token, position, sequence id, wants logits) per token."""
        b = self.batch
        for i, (token, pos, seq, logits) in enumerate(entries):
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
        b.n_tokens = len(entries)
        rc = self.ll.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def generate(
        self, prompts: list[list[int]], output_len: int, temperature: float, seed: int
    ) -> list[list[int]]:
        """``output_len`` new tokens for every prompt (EOS ignored)."""
        out: list[list[int]] = []
        for first in range(0, len(prompts), self.max_seqs):
            wave = prompts[first : first + self.max_seqs]
            out.extend(self._generate_wave(wave, output_len, temperature, seed + first))
        return out

    def _generate_wave(
        self, prompts: list[list[int]], output_len: int, temperature: float, seed: int
    ) -> list[list[int]]:
        ll = self.ll
        ll.llama_memory_clear(ll.llama_get_memory(self.ctx), True)
        sampler = self._sampler(temperature, seed)
        try:
            outputs: list[list[int]] = [[] for _ in prompts]
            # Prompt tokens of all sequences, packed in n_batch-token batches; a
            # sequence is sampled right after the batch holding its last token.
            pending = [
                (tok, pos, seq, pos == len(p) - 1)
                for seq, p in enumerate(prompts)
                for pos, tok in enumerate(p)
            ]
            for start in range(0, len(pending), self.n_batch):
                chunk = pending[start : start + self.n_batch]
                self._decode(chunk)
                rows = [(i, e[2]) for i, e in enumerate(chunk) if e[3]]
                for row, seq in rows:
                    outputs[seq].append(ll.llama_sampler_sample(sampler, self.ctx, row))
            for step in range(output_len - 1):
                self._decode(
                    [
                        (o[-1], len(p) + step, seq, True)
                        for seq, (p, o) in enumerate(zip(prompts, outputs))
                    ]
                )
                for seq, o in enumerate(outputs):
                    o.append(ll.llama_sampler_sample(sampler, self.ctx, seq))
            return outputs
        finally:
            ll.llama_sampler_free(sampler)


def _quiet_log(level: int, text: bytes, user_data: Any) -> None:
    pass  # llama.cpp logs every tensor and buffer at load; the benchmark's lines matter


# The C callback made from _quiet_log; kept for the process, llama.cpp holds it.
_LOG_CALLBACK: Any = None


def gguf_path(args: argparse.Namespace) -> str:
    if args.gguf_file:
        return args.gguf_file
    if args.load_format == "dummy":
        raise SystemExit(
            "--backend llama.cpp needs real weights, not --load-format dummy"
        )
    return cached_gguf(args.model, args.gguf_dtype)


def make_runner(
    args: argparse.Namespace, num_seqs: int, max_len: int
) -> LlamaCppRunner:
    return LlamaCppRunner(
        gguf_path(args),
        min(num_seqs, args.llama_cpp_max_seqs),
        max_len,
        args.llama_cpp_threads,
    )
