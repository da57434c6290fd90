"""The tensor-parallel group handed to the parallel layers, and the pipeline
stage a rank belongs to.

Both are passed down explicitly (no module-level global), so a model built for one
rank carries everything it needs. With size 1 every collective is the identity.
Ranks are stage-major: rank = stage * TP size + TP rank.
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


# Tokens travel point to point apart from the hidden states (tag 0).
TOKENS_TAG = 1


@dataclass(frozen=True)
class PipelineGroup:
    """This rank's pipeline stage. Stage s hands its hidden states and residual
    to the same TP rank of stage s + 1 (point to point); the last stage's first
    rank samples and sends the tokens to every rank (point to point too, so a
    rank can take them when a later step needs them)."""

    rank: int = 0  # in the world group
    size: int = 1  # number of stages
    tp_size: int = 1  # ranks per stage

    @property
    def stage(self) -> int:
        return self.rank // self.tp_size

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        return self.stage == self.size - 1

    @property
    def output_rank(self) -> int:
        return (self.size - 1) * self.tp_size

    def layers(self, num_layers: int) -> range:
        """This stage's layers: an even split, earlier stages taking one more
        when it does not divide (the last stage also runs the LM head)."""
        return stage_layers(num_layers, self.size, self.stage)

    def send_next(
        self,
        hidden: torch.Tensor,  # [T, H]
        residual: torch.Tensor,  # [T, H]
    ) -> None:
        dist.send(torch.stack([hidden, residual]), dst=self.rank + self.tp_size)

    def recv_prev(
        self, num_tokens: int, hidden_size: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:  # [T, H] each
        both = torch.empty(2, num_tokens, hidden_size, dtype=dtype)
        dist.recv(both, src=self.rank - self.tp_size)
        return both[0], both[1]

    def send_tokens(self, tokens: torch.Tensor) -> list[Any]:
        """Starts sending the output rank's sampled tokens [S] to every other
        rank; -> the sends' work handles (keep them until they complete)."""
        others = (r for r in range(self.size * self.tp_size) if r != self.rank)
        return [dist.isend(tokens, dst=r, tag=TOKENS_TAG) for r in others]

    def recv_tokens(self, num_tokens: int) -> tuple[torch.Tensor, Any]:
        """Starts receiving a step's sampled tokens from the output rank;
        -> (tokens [S], valid once the handle's wait() returns)."""
        tokens = torch.empty(num_tokens, dtype=torch.long)
        return tokens, dist.irecv(tokens, src=self.output_rank, tag=TOKENS_TAG)

    def share_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """In place, from the output rank to every rank of the world."""
        if self.size * self.tp_size > 1 and len(tokens):
            dist.broadcast(tokens, src=self.output_rank)
        return tokens


def stage_layers(num_layers: int, num_stages: int, stage: int) -> range:
    base, extra = divmod(num_layers, num_stages)
    start = stage * base + min(stage, extra)
    return range(start, start + base + (stage < extra))


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
    rank: int, init_method: str, tp_size: int, pp_size: int = 1
) -> tuple[TensorParallelGroup, PipelineGroup]:
    """Joins the world group (gloo on CPU, NCCL with CUDA) of tp_size * pp_size
    ranks; each stage's TP group spans its tp_size consecutive ranks (the whole
    world without pipeline stages). The timeout bounds how long a rank waits on
    a dead peer."""
    check_world_group_free()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(
        backend,
        init_method=init_method,
        rank=rank,
        world_size=tp_size * pp_size,
        timeout=timedelta(minutes=10),
    )
    stage = rank // tp_size
    group = dist.group.WORLD
    if pp_size > 1 and tp_size > 1:
        # Every rank takes part in creating every group, in the same order.
        groups = [
            dist.new_group(list(range(s * tp_size, (s + 1) * tp_size)))
            for s in range(pp_size)
        ]
        group = groups[stage]
    tp = TensorParallelGroup(rank=rank % tp_size, size=tp_size, group=group)
    return tp, PipelineGroup(rank=rank, size=pp_size, tp_size=tp_size)


def destroy_distributed(world_size: int = 2) -> None:
    """Leaves the world group, if the caller's world spans processes: a
    single-rank engine never joined it, and must not tear down the one a TP
    engine's driver uses in the same process."""
    if world_size == 1:
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
