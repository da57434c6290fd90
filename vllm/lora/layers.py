"""LoRA around the tensor-parallel linear layers, for batches that mix adapters.

Each wrapped layer holds ``max_loras`` slots of stacked A and B matrices (zero where
a slot's adapter does not target it, zero-padded to ``max_lora_rank``), sharded
the way the base layer is:

- column-parallel (QKV, gate/up): A is replicated and B holds this rank's output
  rows, cut by the base layer's own weight_loader. A fused layer stacks its parts'
  A matrices, and its B is block-diagonal, so one shrink and one expand matmul
  serve every part.
- row-parallel (o, down): A holds this rank's input columns and B is replicated.
  Each rank adds B @ (A_shard @ x_shard) to its partial sum before the all-reduce,
  which adds the ranks' parts into the full delta along with the base output.

Per step, ``LoRABatch`` splits the rows into runs of one slot. The model runner
orders a step's rows by adapter (within the single-token queries and within the
prompt chunks), so each adapter has at most two runs: each layer then adds two
matmuls per run straight into its output rows, never a loop over tokens. Rows in
any other order are gathered by slot and added back with one scatter.
"""

import torch
from torch import nn

from vllm import _custom_ops as ops
from vllm.model_executor.layers.linear import RowParallelLinear


class LoRABatch:
    """Which rows of this step use which slot; shared by one model's LoRA layers
    and set once per step by the worker's LoRA manager."""

    def __init__(self) -> None:
        self.groups: list[tuple[int, int, int]] = []  # (slot, start, end) in rows
        # None when groups index the batch rows themselves (rows already come in
        # runs of one slot: no gather, no scatter); else the rows using an
        # adapter, sorted by slot, which groups then index.
        self.rows: torch.Tensor | None = None

    def set(self, row_slots: torch.Tensor, num_slots: int) -> None:
        """row_slots: [T] int64, the slot of each row, -1 for the base model."""
        runs = _runs(row_slots)
        counts = torch.bincount(row_slots + 1, minlength=num_slots + 1).tolist()
        num_used = sum(1 for c in counts[1:] if c)
        # Up to two runs per slot: decode rows, then prompt-chunk rows.
        if len(runs) <= 2 * num_used:
            self.groups, self.rows = runs, None
            return
        self.groups, start = [], 0
        for slot, count in enumerate(counts[1:]):
            if count:
                self.groups.append((slot, start, start + count))
                start += count
        order = torch.argsort(row_slots, stable=True)
        self.rows = order[counts[0] :]


def _runs(row_slots: torch.Tensor) -> list[tuple[int, int, int]]:
    """(slot, start, end) of each run of equal slots >= 0, in row order."""
    if not len(row_slots):
        return []
    starts = [0] + (torch.nonzero(row_slots[1:] != row_slots[:-1]) + 1).view(
        -1
    ).tolist()
    ends = starts[1:] + [len(row_slots)]
    slots = row_slots[starts].tolist()
    return [(s, a, b) for s, a, b in zip(slots, starts, ends) if s >= 0]


class LoRALinear(nn.Module):
    """A column- or row-parallel linear layer plus each row's adapter delta."""

    def __init__(
        self,
        base: nn.Module,
        batch: LoRABatch,
        num_parts: int,  # projections fused in the base layer
        max_loras: int,
        max_rank: int,
        dtype: torch.dtype,  # the model's compute dtype (its weights may be 16-bit)
    ):
        super().__init__()
        self.base = base
        self.batch = batch
        self.row_parallel = isinstance(base, RowParallelLinear)
        self.max_rank = max_rank
        out_features, in_features = base.weight.shape  # this rank's shard
        width = num_parts * max_rank
        self.lora_a = torch.zeros(max_loras, width, in_features, dtype=dtype)
        self.lora_b = torch.zeros(max_loras, out_features, width, dtype=dtype)

    def clear(self, slot: int) -> None:
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()

    def set_part(
        self,
        slot: int,
        part: int,  # index of the projection in the fused layer
        shard_id: str | int | None,  # what the base weight_loader calls it
        a: torch.Tensor,  # [r, in], full size
        b: torch.Tensor,  # [out of the part, r], full size, scaling folded in
    ) -> None:
        first = part * self.max_rank
        cols = slice(first, first + a.shape[0])
        a_slot, b_slot = self.lora_a[slot][cols], self.lora_b[slot][:, cols]
        if self.row_parallel:
            self.base.weight_loader(a_slot, a)  # this rank's input columns
            b_slot.copy_(b)
        else:
            a_slot.copy_(a)
            extra = () if shard_id is None else (shard_id,)
            self.base.weight_loader(b_slot, b, *extra)  # this rank's output rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [T, in shard]
        base = self.base
        if not self.row_parallel:
            out = base(x)
            self._add_delta(x, out)
            return out
        out = ops.linear(x, base.weight, None, base.kernels)  # this rank's partial sum
        self._add_delta(x, out)
        out = base.tp.all_reduce(out)
        return out if base.bias is None else out + base.bias

    def _add_delta(
        self,
        x: torch.Tensor,  # [T, in]
        out: torch.Tensor,  # [T, out], updated in place
    ) -> None:
        batch = self.batch
        if not batch.groups:
            return
        rows = batch.rows
        if rows is None:  # runs of one slot in the batch rows themselves
            for slot, start, end in batch.groups:
                shrunk = torch.mm(x[start:end], self.lora_a[slot].t())
                out[start:end].addmm_(shrunk, self.lora_b[slot].t())
            return
        xs = x.index_select(0, rows)
        ys = torch.empty(xs.shape[0], out.shape[1], dtype=out.dtype)
        for slot, start, end in batch.groups:
            shrunk = torch.mm(xs[start:end], self.lora_a[slot].t())
            torch.mm(shrunk, self.lora_b[slot].t(), out=ys[start:end])
        out.index_add_(0, rows, ys)
