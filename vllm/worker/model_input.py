"""The tensors one forward pass needs, built by the model runner each step."""

from dataclasses import dataclass, field
from typing import Any

import torch

from vllm.model_executor.layers.attention import AttentionMetadata
from vllm.worker.request_state import CachedRequestState


@dataclass
class ModelInput:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    meta: AttentionMetadata
    # Batch rows whose logits are computed: first the last row of every request
    # that samples, then the rows of prompt chunks that want prompt logprobs.
    logits_rows: torch.Tensor  # [N] int64
    # Sampling-side bookkeeping, on the rank that samples (the tensors above are
    # all a rank needs to run the forward pass): the step's requests with their
    # token counts in row order, who samples, and prompt-logprob spans as
    # (request, first index into logits_rows, count, index of the first prompt
    # token they predict).
    scheduled: list[tuple[CachedRequestState, int]] = field(default_factory=list)
    sample_states: list[CachedRequestState] = field(default_factory=list)
    prompt_logprob_spans: list[tuple[CachedRequestState, int, int, int]] = field(
        default_factory=list
    )
    # Rows of the persistent batch (vllm.worker.input_batch) in `scheduled`
    # order, with their token counts, and which of them sample (indices into
    # `scheduled`, parallel to sample_states).
    rows: torch.Tensor | None = None  # [S] int64
    counts: torch.Tensor | None = None  # [S] int64
    sample_index: torch.Tensor | None = None  # [N] int64
    # With LoRA on: each row's adapter slot and the slots to fill
    # (vllm.lora.worker_manager.LoRAInputs), on every rank.
    lora: Any = None
