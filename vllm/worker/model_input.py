"""The tensors one forward pass needs, built by the model runner each step."""

from dataclasses import dataclass, field

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
    # token counts, who samples, and prompt-logprob spans as (request, first
    # index into logits_rows, count, index of the first prompt token they predict).
    scheduled: list[tuple[CachedRequestState, int]] = field(default_factory=list)
    sample_states: list[CachedRequestState] = field(default_factory=list)
    prompt_logprob_spans: list[tuple[CachedRequestState, int, int, int]] = field(
        default_factory=list
    )
