"""Vocabulary-parallel embedding and LM head: each rank holds a contiguous slice
of the (padded) vocabulary."""

import torch
import torch.nn.functional as F
from torch import nn

from vllm import _custom_ops as ops
from vllm.distributed.parallel_state import TensorParallelGroup


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, tp: TensorParallelGroup):
        super().__init__()
        self.tp = tp
        self.vocab_size = vocab_size
        # Pad so every rank holds the same number of rows.
        self.shard_size = -(-vocab_size // tp.size)
        self.vocab_start = tp.rank * self.shard_size
        # Rows come out in the dtype the model computes in (built under it as the
        # default), also when the table is stored in 16 bits (weight_dtype).
        self.compute_dtype = torch.get_default_dtype()
        self.weight = nn.Parameter(
            torch.empty(self.shard_size, hidden_size), requires_grad=False
        )

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        rows = max(0, min(self.shard_size, self.vocab_size - self.vocab_start))
        param.data.zero_()
        param.data[:rows].copy_(loaded[self.vocab_start : self.vocab_start + rows])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [T] -> [T, H]
        if self.tp.size == 1:
            return F.embedding(input_ids, self.weight).to(self.compute_dtype)
        local = input_ids - self.vocab_start
        outside = (local < 0) | (local >= self.shard_size)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out = out.to(self.compute_dtype).masked_fill_(outside.unsqueeze(-1), 0.0)
        return self.tp.all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """Output projection over the vocabulary. With tied embeddings the model points
    this layer's weight at the embedding's (identical sharding)."""

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        tp: TensorParallelGroup,
        kernels: bool = True,
    ):
        super().__init__(vocab_size, hidden_size, tp)
        self.kernels = kernels  # decode-sized logits run the compiled kernel

    def compute_logits(
        self, hidden: torch.Tensor, gather_to_all: bool = True
    ) -> torch.Tensor | None:
        """hidden: [N, H] -> logits [N, vocab] on every rank, or only on rank 0
        (None elsewhere) when gather_to_all is False."""
        local = ops.linear(hidden, self.weight, None, self.kernels)  # [N, vocab / tp]
        full = self.tp.all_gather(local) if gather_to_all else self.tp.gather(local)
        return None if full is None else full[:, : self.vocab_size]
