"""Builds batch tensors from the worker's request states, runs the model, samples."""

from dataclasses import dataclass

import torch

from vllm.config import VllmConfig
from vllm.distributed.parallel_state import TensorParallelGroup
from vllm.messages import ExecuteModelRequest, Logprobs, SamplerOutput
from vllm.model_executor.layers.attention import AttentionMetadata, PrefillSeq
from vllm.model_executor.layers.sampler import logprobs_at, sample
from vllm.model_executor.model_loader.loader import get_model
from vllm.worker.request_state import CachedRequestState, RequestStates


@dataclass
class ModelInput:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    meta: AttentionMetadata
    sample_rows: list[int]  # batch row of the last token of each sampling request
    sample_states: list[CachedRequestState]  # parallel to sample_rows
    # (request, first batch row, rows) for prompt positions that want logprobs
    prompt_logprob_spans: list[tuple[CachedRequestState, int, int]]


class ModelRunner:
    def __init__(self, config: VllmConfig, tp: TensorParallelGroup):
        self.config = config
        self.tp = tp
        self.block_size = config.cache_config.block_size
        self.requests = RequestStates()
        self.model = None
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def load_model(self) -> None:
        self.model = get_model(self.config.model_config, self.tp)

    def initialize_cache(self, num_blocks: int, num_kv_heads: int) -> None:
        mc = self.config.model_config
        shape = (num_blocks, num_kv_heads, self.block_size, mc.head_size)
        self.kv_caches = [
            (torch.zeros(shape, dtype=mc.dtype), torch.zeros(shape, dtype=mc.dtype))
            for _ in range(mc.num_layers)
        ]

    @torch.inference_mode()
    def execute_model(self, req: ExecuteModelRequest) -> SamplerOutput:
        scheduled = self.requests.apply(req)
        if not scheduled:
            return SamplerOutput(req_ids=[], sampled_token_ids=[], logprobs=[])
        inp = self.prepare_inputs(scheduled)
        hidden = self.model(inp.input_ids, inp.positions, self.kv_caches, inp.meta)
        prompt_logprobs = self._prompt_logprobs(hidden, inp)
        for state, n in scheduled:
            state.num_computed_tokens += n
        if not inp.sample_rows:
            return SamplerOutput([], [], [], prompt_logprobs)
        logits = self.model.compute_logits(hidden[inp.sample_rows])
        tokens, logprobs = sample(logits.float(), inp.sample_states)
        for state, token in zip(inp.sample_states, tokens):
            state.token_ids.append(token)
        return SamplerOutput(
            req_ids=[s.req_id for s in inp.sample_states],
            sampled_token_ids=tokens,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
        )

    def prepare_inputs(
        self, scheduled: list[tuple[CachedRequestState, int]]
    ) -> ModelInput:
        # Single-token queries first: the attention layer batches them in one call.
        ordered = sorted(scheduled, key=lambda item: item[1] != 1)
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        decode_tables, decode_lens, prefills = [], [], []
        sample_rows, sample_states, spans = [], [], []
        bs = self.block_size
        for state, n in ordered:
            start, row = state.num_computed_tokens, len(ids)
            pos = range(start, start + n)
            ids.extend(state.token_ids[start : start + n])
            positions.extend(pos)
            slots.extend(state.block_ids[p // bs] * bs + p % bs for p in pos)
            if n == 1:
                decode_tables.append(state.block_ids)
                decode_lens.append(start + 1)
            else:
                table = torch.tensor(state.block_ids[: -(-(start + n) // bs)])
                prefills.append(PrefillSeq(row, n, start + n, table))
            if start + n == len(state.token_ids):
                sample_rows.append(row + n - 1)
                sample_states.append(state)
            if (
                state.sampling.prompt_logprobs >= 0
                and start < state.num_prompt_tokens - 1
            ):
                spans.append((state, row, min(n, state.num_prompt_tokens - 1 - start)))
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.long),
            num_decode_tokens=len(decode_lens),
            decode_block_tables=_pad_tables(decode_tables),
            decode_context_lens=torch.tensor(decode_lens, dtype=torch.int32),
            prefills=prefills,
        )
        return ModelInput(
            input_ids=torch.tensor(ids, dtype=torch.long),
            positions=torch.tensor(positions, dtype=torch.long),
            meta=meta,
            sample_rows=sample_rows,
            sample_states=sample_states,
            prompt_logprob_spans=spans,
        )

    def _prompt_logprobs(
        self, hidden: torch.Tensor, inp: ModelInput
    ) -> dict[str, list[Logprobs]]:
        """Row r of a prompt chunk predicts the prompt token after it."""
        out: dict[str, list[Logprobs]] = {}
        for state, row, count in inp.prompt_logprob_spans:
            logits = self.model.compute_logits(hidden[row : row + count])
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            first = state.num_computed_tokens + 1
            nxt = state.token_ids[first : first + count]
            k = state.sampling.prompt_logprobs
            out[state.req_id] = [
                logprobs_at(logprobs[i], tok, k) for i, tok in enumerate(nxt)
            ]
        return out


def _pad_tables(tables: list[list[int]]) -> torch.Tensor:  # -> [B, max_blocks] int32
    width = max((len(t) for t in tables), default=0)
    return torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
