"""The tensor-parallel group handed to the parallel layers.

It is passed down explicitly (no module-level global), so a model built for one rank
carries everything it needs. With size 1 every collective is the identity.
"""

import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class TensorParallelGroup:
    rank: int = 0
    size: int = 1
    group: Any = None  # torch.distributed ProcessGroup when size > 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            dist.all_reduce(x, group=self.group)
        return x

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        if self.size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim)

    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        """In place, from TP rank 0."""
        if self.size > 1:
            src = dist.get_global_rank(self.group, 0) if self.group is not None else 0
            dist.broadcast(x, src=src, group=self.group)
        return x

    def gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor | None:
        """Concatenation of every rank's x on rank 0; None elsewhere."""
        if self.size == 1:
            return x
        x = x.contiguous()
        parts = (
            [torch.empty_like(x) for _ in range(self.size)] if self.rank == 0 else None
        )
        dst = dist.get_global_rank(self.group, 0) if self.group is not None else 0
        dist.gather(x, parts, dst=dst, group=self.group)
        return torch.cat(parts, dim=dim) if self.rank == 0 else None


def divide(numerator: int, denominator: int, what: str) -> int:
    if numerator % denominator:
        raise ValueError(
            f"{what} ({numerator}) is not divisible by the tensor-parallel size "
            f"({denominator})"
        )
    return numerator // denominator


def get_open_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_world_group_free() -> None:
    """The world group is per process, and a legacy driver (rank 0) lives in the
    engine's process: a second TP engine there cannot have a group of its own."""
    if dist.is_available() and dist.is_initialized():
        raise RuntimeError(
            "this process already runs a tensor-parallel engine (torch.distributed "
            "is initialized); shut it down before starting another"
        )


def init_distributed(
    rank: int, world_size: int, init_method: str
) -> TensorParallelGroup:
    """Joins the world group (gloo on CPU, NCCL with CUDA); the TP group spans it.
    The timeout bounds how long a rank waits on a dead peer."""
    check_world_group_free()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(
        backend,
        init_method=init_method,
        rank=rank,
        world_size=world_size,
        timeout=timedelta(minutes=10),
    )
    return TensorParallelGroup(rank=rank, size=world_size, group=dist.group.WORLD)


def destroy_distributed(tp: TensorParallelGroup | None = None) -> None:
    """Leaves the world group. Given the caller's TP group, only when that group
    spans processes: a single-rank engine never joined the world group, and must
    not tear down the one a TP engine's driver uses in the same process."""
    if tp is not None and tp.size == 1:
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
