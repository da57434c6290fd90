"""LoRA layers against the plain math, row by row: mixed adapters in one batch,
fused projections, and tensor-parallel shards that add up to the TP=1 result."""

import pytest
import torch

from vllm.distributed.parallel_state import TensorParallelGroup
from vllm.lora.layers import LoRABatch, LoRALinear
from vllm.model_executor.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)

MAX_LORAS, MAX_RANK = 3, 8
HIDDEN, HEAD, HEADS, KV_HEADS, INTER = 16, 4, 4, 2, 24


def _layers(tp: TensorParallelGroup) -> dict:
    torch.manual_seed(0)
    return {
        "qkv": (
            QKVParallelLinear(HIDDEN, HEAD, HEADS, KV_HEADS, tp),
            [("q", HEADS * HEAD), ("k", KV_HEADS * HEAD), ("v", KV_HEADS * HEAD)],
            HIDDEN,
        ),
        "gate_up": (
            MergedColumnParallelLinear(HIDDEN, [INTER, INTER], tp),
            [(0, INTER), (1, INTER)],
            HIDDEN,
        ),
        "down": (RowParallelLinear(INTER, HIDDEN, tp), [(None, HIDDEN)], INTER),
    }


def _full_weights(kind: str) -> torch.Tensor:
    """The full base weight of a layer kind, [out, in]."""
    gen = torch.Generator().manual_seed(["qkv", "gate_up", "down"].index(kind))
    _, parts, in_features = _layers(TensorParallelGroup())[kind]
    out = sum(size for _, size in parts)
    return torch.randn(out, in_features, generator=gen)


def _adapters(kind: str) -> dict[int, list]:
    """slot -> [(part, A [r, in], B [out of part, r])]; ranks differ by slot, and
    slot 1 leaves the first part alone."""
    gen = torch.Generator().manual_seed(7)
    _, parts, in_features = _layers(TensorParallelGroup())[kind]
    adapters = {}
    for slot, rank in enumerate((8, 3, 5)):
        chosen = [
            (
                p,
                torch.randn(rank, in_features, generator=gen),
                torch.randn(size, rank, generator=gen),
            )
            for p, (_, size) in enumerate(parts)
            if not (slot == 1 and p == 0 and len(parts) > 1)
        ]
        adapters[slot] = chosen
    return adapters


def _build(kind: str, tp: TensorParallelGroup) -> LoRALinear:
    base, parts, _ = _layers(tp)[kind]
    full = _full_weights(kind)
    offset = 0
    for shard_id, size in parts:
        piece = full[offset : offset + size]
        offset += size
        args = () if shard_id is None else (shard_id,)
        base.weight_loader(base.weight, piece, *args)
    layer = LoRALinear(
        base, LoRABatch(), len(parts), MAX_LORAS, MAX_RANK, base.weight.dtype
    )
    for slot, chosen in _adapters(kind).items():
        for p, a, b in chosen:
            layer.set_part(slot, p, parts[p][0], a, b)
    return layer


def _reference(kind: str, x: torch.Tensor, row_slots: list[int]) -> torch.Tensor:
    """Row by row: x W^T plus, for the row's adapter, B_p A_p x in each part."""
    full = _full_weights(kind)
    _, parts, _ = _layers(TensorParallelGroup())[kind]
    starts = [sum(size for _, size in parts[:p]) for p in range(len(parts))]
    out = x @ full.t()
    adapters = _adapters(kind)
    for row, slot in enumerate(row_slots):
        if slot < 0:
            continue
        for p, a, b in adapters[slot]:
            delta = b @ (a @ x[row])
            out[row, starts[p] : starts[p] + len(delta)] += delta
    return out


@pytest.mark.parametrize("kind", ["qkv", "gate_up", "down"])
@pytest.mark.parametrize(
    "row_slots",
    [
        [0, 2, -1, 1, 1, 0, -1, 2, 2, 0],  # mixed, with base-model rows
        [1, 1, 1, 1],  # one adapter for the whole batch: no gather
        [-1, 0, 0, 2, -1, 0, 2, 2],  # runs, as the model runner orders rows
        [-1, -1, -1],  # no adapter at all
    ],
)
def test_mixed_batch_equals_row_by_row_math(kind, row_slots):
    layer = _build(kind, TensorParallelGroup())
    x = torch.randn(len(row_slots), _layers(TensorParallelGroup())[kind][2])
    layer.batch.set(torch.tensor(row_slots), MAX_LORAS)
    torch.testing.assert_close(layer(x), _reference(kind, x, row_slots))


def test_batch_groups_scattered_rows_by_slot():
    batch = LoRABatch()
    batch.set(torch.tensor([2, -1, 0, 2, 0, -1, 2, 0]), 3)
    assert batch.groups == [(0, 0, 3), (2, 3, 6)]
    assert batch.rows.tolist() == [2, 4, 7, 0, 3, 6]


def test_batch_uses_runs_of_ordered_rows_in_place():
    """Rows ordered by adapter within decodes and within prompt chunks: each
    slot's rows are used where they are, no gather."""
    batch = LoRABatch()
    batch.set(torch.tensor([-1, 0, 0, 2, -1, 0, 2, 2]), 3)
    assert batch.rows is None
    assert batch.groups == [(0, 1, 3), (2, 3, 4), (0, 5, 6), (2, 6, 8)]


def _column_shards(kind: str, out: torch.Tensor, tp_size: int) -> list:
    """Splits a TP=1 column-layer output into what each rank should hold."""
    _, parts, _ = _layers(TensorParallelGroup())[kind]
    pieces = out.split([size for _, size in parts], dim=-1)
    return [
        torch.cat([p.chunk(tp_size, dim=-1)[r] for p in pieces], dim=-1)
        for r in range(tp_size)
    ]


@pytest.mark.parametrize("kind", ["qkv", "gate_up", "down"])
def test_tp2_shards_add_up_to_tp1(kind):
    """Column layers: each rank's output is its slice of the TP=1 output. Row
    layers: the ranks' partial sums (base plus LoRA, before the all-reduce)
    add up to the TP=1 output."""
    row_slots = torch.tensor([0, 2, -1, 1, 1, 0])
    in_features = _layers(TensorParallelGroup())[kind][2]
    x = torch.randn(len(row_slots), in_features)
    want = _reference(kind, x, row_slots.tolist())
    outs = []
    for rank in range(2):
        layer = _build(kind, TensorParallelGroup(rank=rank, size=2))
        layer.batch.set(row_slots, MAX_LORAS)
        if layer.row_parallel:
            x_shard = x.chunk(2, dim=-1)[rank]
            partial = x_shard @ layer.base.weight.t()
            layer._add_delta(x_shard, partial)
            outs.append(partial)
        else:
            outs.append(layer(x))
    if kind == "down":
        torch.testing.assert_close(outs[0] + outs[1], want)
    else:
        for got, expected in zip(outs, _column_shards(kind, want, 2)):
            torch.testing.assert_close(got, expected)
