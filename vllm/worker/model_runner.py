"""Builds batch tensors from the worker's request states, runs the model, samples.

One execution path, in three parts any driver can call: ``prepare_inputs`` applies a
step's delta and builds the batch, ``forward`` computes the logits of the rows that
need them, ``sample`` picks tokens and records them. ``execute_model`` chains the
three. Whether logits end up on every rank (each rank then samples the same tokens
and keeps identical request states) or only on rank 0 is the caller's argument.
"""

import contextlib

import torch

from vllm.config import VllmConfig
from vllm.distributed.parallel_state import PipelineGroup, TensorParallelGroup
from vllm.messages import ExecuteModelRequest, PromptLogprobs, SamplerOutput
from vllm.model_executor.layers.attention import AttentionMetadata, PrefillSeq
from vllm.model_executor.layers.sampler import logprobs_at, sample
from vllm.model_executor.model_loader.loader import get_model
from vllm.worker.input_batch import InputBatch
from vllm.worker.model_input import ModelInput
from vllm.worker.request_state import CachedRequestState, RequestStates

_EMPTY = SamplerOutput(req_ids=[], sampled_token_ids=[], logprobs=[])
_scope = torch.profiler.record_function  # named spans for benchmarks/profile_step.py


class ModelRunner:
    def __init__(
        self,
        config: VllmConfig,
        tp: TensorParallelGroup,
        pp: PipelineGroup | None = None,
    ):
        self.config = config
        self.tp = tp
        self.pp = pp or PipelineGroup()
        # This rank's pipeline stage runs these layers (all, without stages).
        self.layers = self.pp.layers(config.model_config.num_layers)
        self.block_size = config.cache_config.block_size
        self.requests = RequestStates()
        self.batch = InputBatch(
            config.scheduler_config.max_num_seqs,
            config.model_config.max_model_len,
            self.block_size,
        )
        self.model = None
        self.lora_manager = None  # vllm.lora.worker_manager.LoRAManager, if enabled
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def load_model(self) -> None:
        self.model = get_model(self.config.model_config, self.tp, self.layers)
        if self.config.lora_config is not None:
            from vllm.lora.worker_manager import LoRAManager

            self.lora_manager = LoRAManager(self.model, self.config)

    def initialize_cache(self, num_blocks: int, num_kv_heads: int) -> None:
        mc = self.config.model_config
        shape = (num_blocks, num_kv_heads, self.block_size, mc.head_size)
        self.kv_caches = [
            (torch.zeros(shape, dtype=mc.dtype), torch.zeros(shape, dtype=mc.dtype))
            for _ in self.layers
        ]

    @torch.inference_mode()
    def execute_model(
        self, req: ExecuteModelRequest, gather_to_all: bool = True
    ) -> SamplerOutput:
        inp = self.prepare_inputs(req)
        if inp is None:
            return _EMPTY
        return self.sample(inp, self.forward(inp, gather_to_all))

    @torch.inference_mode()
    def forward(self, inp: ModelInput, gather_to_all: bool) -> torch.Tensor | None:
        """-> float32 logits [N, vocab] of inp.logits_rows, on every rank of the
        last pipeline stage if gather_to_all, else on its first rank only (None
        elsewhere). A stage before the last hands its output to the next."""
        pp = self.pp
        with _scope("vllm::forward"), _flush_subnormals():
            if inp.lora is not None:
                self.lora_manager.apply(inp.lora)
            carried = None
            if not pp.is_first:
                mc = self.config.model_config
                size = (len(inp.input_ids), mc.hf_config.hidden_size, mc.dtype)
                carried = pp.recv_prev(*size)
            hidden = self.model(
                inp.input_ids, inp.positions, self.kv_caches, inp.meta, carried
            )
        if not pp.is_last:
            pp.send_next(*hidden)
            return None
        if not len(inp.logits_rows):
            return torch.empty(0, 0)
        with _scope("vllm::compute_logits"):
            logits = self.model.compute_logits(hidden[inp.logits_rows], gather_to_all)
        return None if logits is None else logits.float()

    @torch.inference_mode()
    def sample(self, inp: ModelInput, logits: torch.Tensor) -> SamplerOutput:
        """Samples the rows that end a request's known tokens, records the tokens
        and computed counts in the request states, and scores prompt positions
        that asked for logprobs."""
        batch = self.batch
        self._advance(inp)
        num_sampled = len(inp.sample_states)
        prompt_logprobs = self._prompt_logprobs(logits[num_sampled:], inp)
        if not num_sampled:
            return SamplerOutput([], [], [], prompt_logprobs)
        with _scope("vllm::sample"):
            rows = inp.rows[inp.sample_index]
            tokens, logprobs = sample(
                logits[:num_sampled],
                inp.sample_states,
                batch.sampling_tensors(rows),
                (batch.token_ids, rows),
                self.config.model_config.use_custom_kernels,
            )
        self._record(inp, tokens)
        return SamplerOutput(
            req_ids=[s.req_id for s in inp.sample_states],
            sampled_token_ids=tokens,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
        )

    def accept(self, inp: ModelInput, tokens: list[int], late: bool = False) -> None:
        """What ``sample`` records, with tokens sampled elsewhere: a rank that
        did not sample takes rank 0's, so every rank keeps the same states.
        ``late``: later steps came first, and removals may have moved rows."""
        if late:
            inp.rows = self.batch.rows([state for state, _ in inp.scheduled])
        self._advance(inp)
        if inp.sample_states:
            self._record(inp, tokens)

    def _advance(self, inp: ModelInput) -> None:
        for state, n in inp.scheduled:
            state.num_computed_tokens += n
        self.batch.num_computed[inp.rows] += inp.counts

    def _record(self, inp: ModelInput, tokens: list[int]) -> None:
        self.batch.record_sampled(inp.rows[inp.sample_index], tokens)
        for state, token in zip(inp.sample_states, tokens):
            state.token_ids.append(token)

    def prepare_inputs(self, req: ExecuteModelRequest) -> ModelInput | None:
        """Applies the step's delta; None when it schedules nothing."""
        with _scope("vllm::prepare_inputs"):
            scheduled = self.requests.apply(req)
            self._update_batch(req, scheduled)
            if not scheduled:
                return None
            inp = self._build_inputs(scheduled)
            if self.lora_manager is not None:
                inp.lora = self.lora_manager.plan(
                    [(state.lora, n) for state, n in inp.scheduled]
                )
            return inp

    def _update_batch(
        self,
        req: ExecuteModelRequest,
        scheduled: list[tuple[CachedRequestState, int]],
    ) -> None:
        """Mirrors the step's delta in the persistent batch."""
        batch = self.batch
        for req_id in req.finished_req_ids:
            batch.remove(req_id)
        for state, _ in scheduled[: len(req.new_requests)]:
            batch.add(state)
        for running in req.running:
            if running.new_block_ids:
                row = batch.row_of[running.req_id]
                batch.append_blocks(row, running.new_block_ids)

    def _build_inputs(
        self, scheduled: list[tuple[CachedRequestState, int]]
    ) -> ModelInput:
        # Single-token queries first: the attention layer batches them in one call.
        # Then by adapter, so each LoRA layer finds an adapter's rows in (at most
        # two) runs it uses in place.
        ordered = sorted(scheduled, key=_row_order)
        d = sum(1 for _, n in ordered if n == 1)
        rows = self.batch.rows([state for state, _ in ordered])
        # Single-token rows are gathered from the persistent batch; prompt
        # chunks are built from the request states' lists.
        ids, positions, slots, tables = self.batch.decode_inputs(rows[:d])
        chunk = _ChunkInputs(self.block_size)
        sample_rows, sample_index, sample_states, span_rows = [], [], [], []
        row = 0
        for i, (state, n) in enumerate(ordered):
            start = state.num_computed_tokens
            if n > 1:
                chunk.add(state, row, n)
            if start + n == len(state.token_ids):
                sample_rows.append(row + n - 1)
                sample_index.append(i)
                sample_states.append(state)
            wanted = min(n, state.num_prompt_tokens - 1 - start)
            if state.sampling.prompt_logprobs >= 0 and wanted > 0:
                span_rows.append((state, range(row, row + wanted), start + 1))
            row += n
        spans, logits_rows = [], list(sample_rows)
        for state, span, first_token in span_rows:
            spans.append((state, len(logits_rows), len(span), first_token))
            logits_rows.extend(span)
        meta = AttentionMetadata(
            slot_mapping=torch.cat([slots, _longs(chunk.slots)]),
            num_decode_tokens=d,
            decode_block_tables=tables,
            decode_context_lens=(positions + 1).int(),
            prefills=chunk.seqs,
        )
        return ModelInput(
            input_ids=torch.cat([ids, _longs(chunk.ids)]),
            positions=torch.cat([positions, _longs(chunk.positions)]),
            meta=meta,
            logits_rows=_longs(logits_rows),
            scheduled=ordered,
            sample_states=sample_states,
            prompt_logprob_spans=spans,
            rows=rows,
            counts=_longs([n for _, n in ordered]),
            sample_index=_longs(sample_index),
        )

    def _prompt_logprobs(
        self,
        logits: torch.Tensor,  # [rows of every span, vocab]
        inp: ModelInput,
    ) -> dict[str, PromptLogprobs]:
        """Row r of a prompt chunk predicts the prompt token after it."""
        out: dict[str, PromptLogprobs] = {}
        offset = len(inp.sample_states)
        for state, first_row, count, first_token in inp.prompt_logprob_spans:
            rows = logits[first_row - offset : first_row - offset + count]
            logprobs = torch.log_softmax(rows, dim=-1)
            nxt = state.token_ids[first_token : first_token + count]
            k = state.sampling.prompt_logprobs
            out[state.req_id] = PromptLogprobs(
                first_token,
                [logprobs_at(logprobs[i], tok, k) for i, tok in enumerate(nxt)],
            )
        return out


@contextlib.contextmanager
def _flush_subnormals():
    """Subnormal floats cost x86 cores a microcode assist per operation: a step
    whose attention softmax underflows into them (seen with random LoRA
    adapters: a 2048-token prefill took 22 s instead of 4 s) slows down many
    times over. Flushed to zero during the forward pass only (values below
    1.2e-38); the flag is per thread and process-wide, so it is switched back
    off after, leaving the caller's process (the uni executor runs in it) as
    torch's default has it."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


class _ChunkInputs:
    """Rows of prompt chunks (more than one token), from the Python lists."""

    def __init__(self, block_size: int):
        self.block_size = block_size
        self.ids: list[int] = []
        self.positions: list[int] = []
        self.slots: list[int] = []
        self.seqs: list[PrefillSeq] = []

    def add(self, state: CachedRequestState, row: int, n: int) -> None:
        bs, start = self.block_size, state.num_computed_tokens
        pos = range(start, start + n)
        self.ids.extend(state.token_ids[start : start + n])
        self.positions.extend(pos)
        self.slots.extend(state.block_ids[p // bs] * bs + p % bs for p in pos)
        table = torch.tensor(state.block_ids[: -(-(start + n) // bs)])
        self.seqs.append(PrefillSeq(row, n, start + n, table))


def _longs(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def _row_order(item: tuple[CachedRequestState, int]) -> tuple[bool, int]:
    state, n = item
    return n != 1, 0 if state.lora is None else state.lora.lora_int_id
