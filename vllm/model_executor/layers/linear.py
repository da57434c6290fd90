"""Tensor-parallel linear layers.

Each layer holds only its rank's shard and knows how to cut that shard out of a full
checkpoint tensor (its ``weight_loader``), so model code stays free of rank logic.
Column-parallel layers split output features; row-parallel layers split input
features and all-reduce their partial sums. With ``kernels``, few-row (decode)
matmuls run the compiled kernel (``ops.linear``).
"""

import torch
from torch import nn

from vllm import _custom_ops as ops
from vllm.distributed.parallel_state import TensorParallelGroup, divide


def _shard_rows(full: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    return full.narrow(0, rank * size, size)


class ColumnParallelLinear(nn.Module):
    def __init__(
        self,
        input_size: int,
        output_size: int,
        tp: TensorParallelGroup,
        bias: bool = False,
        kernels: bool = True,
    ):
        super().__init__()
        self.tp = tp
        self.kernels = kernels  # use the compiled kernel where it applies
        self.output_size_per_partition = divide(output_size, tp.size, "output size")
        self.weight = nn.Parameter(
            torch.empty(self.output_size_per_partition, input_size),
            requires_grad=False,
        )
        self.bias = (
            nn.Parameter(
                torch.empty(self.output_size_per_partition), requires_grad=False
            )
            if bias
            else None
        )

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        shard = param.shape[0]
        param.data.copy_(_shard_rows(loaded, self.tp.rank, shard))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [T, in]
        return ops.linear(x, self.weight, self.bias, self.kernels)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections of one input fused into one matmul
    (gate and up). Each rank holds its slice of every projection, back to back."""

    def __init__(
        self,
        input_size: int,
        output_sizes: list[int],
        tp: TensorParallelGroup,
        bias: bool = False,
        kernels: bool = True,
    ):
        super().__init__(input_size, sum(output_sizes), tp, bias, kernels)
        self.shard_sizes = [divide(s, tp.size, "output size") for s in output_sizes]

    def weight_loader(
        self, param: nn.Parameter, loaded: torch.Tensor, shard_id: int
    ) -> None:
        size = self.shard_sizes[shard_id]
        offset = sum(self.shard_sizes[:shard_id])
        param.data.narrow(0, offset, size).copy_(
            loaded.narrow(0, self.tp.rank * size, size)
        )


class QKVParallelLinear(ColumnParallelLinear):
    """Fused Q, K, V projection. Query heads are split across ranks; KV heads are
    split too, or replicated when there are fewer KV heads than ranks."""

    def __init__(
        self,
        hidden_size: int,
        head_size: int,
        num_heads: int,
        num_kv_heads: int,
        tp: TensorParallelGroup,
        bias: bool = False,
        kernels: bool = True,
    ):
        self.head_size = head_size
        self.num_heads = divide(num_heads, tp.size, "number of attention heads")
        if tp.size >= num_kv_heads:
            divide(tp.size, num_kv_heads, "TP size vs number of KV heads")
            self.num_kv_heads = 1
            self.kv_replicas = tp.size // num_kv_heads
        else:
            self.num_kv_heads = divide(num_kv_heads, tp.size, "number of KV heads")
            self.kv_replicas = 1
        out = (self.num_heads + 2 * self.num_kv_heads) * head_size * tp.size
        super().__init__(hidden_size, out, tp, bias, kernels)

    def weight_loader(
        self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str
    ) -> None:
        q = self.num_heads * self.head_size
        kv = self.num_kv_heads * self.head_size
        if shard_id == "q":
            offset, size, index = 0, q, self.tp.rank
        else:
            offset = q if shard_id == "k" else q + kv
            size, index = kv, self.tp.rank // self.kv_replicas
        param.data.narrow(0, offset, size).copy_(loaded.narrow(0, index * size, size))


class RowParallelLinear(nn.Module):
    def __init__(
        self,
        input_size: int,
        output_size: int,
        tp: TensorParallelGroup,
        bias: bool = False,
        kernels: bool = True,
    ):
        super().__init__()
        self.tp = tp
        self.kernels = kernels  # use the compiled kernel where it applies
        self.input_size_per_partition = divide(input_size, tp.size, "input size")
        self.weight = nn.Parameter(
            torch.empty(output_size, self.input_size_per_partition),
            requires_grad=False,
        )
        self.bias = (
            nn.Parameter(torch.empty(output_size), requires_grad=False)
            if bias
            else None
        )

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        if param.dim() == 1:  # bias: added once, after the reduction
            param.data.copy_(loaded)
            return
        size = self.input_size_per_partition
        param.data.copy_(loaded.narrow(1, self.tp.rank * size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [T, in / tp]
        out = self.tp.all_reduce(ops.linear(x, self.weight, None, self.kernels))
        return out if self.bias is None else out + self.bias
