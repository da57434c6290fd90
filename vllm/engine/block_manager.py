"""Paged KV-cache bookkeeping in the engine: which blocks each request holds.

The KV tensors themselves live in the workers; this only hands out block ids.
A request's block list only grows until the request is freed.
"""

from collections import deque

from vllm.engine.request import Request


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, watermark: float = 0.01):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.watermark_blocks = int(watermark * num_blocks)
        self._free: deque[int] = deque(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def blocks_needed(self, req: Request, num_tokens: int) -> int:
        """New blocks req needs to hold num_tokens tokens in total."""
        return max(0, -(-num_tokens // self.block_size) - len(req.block_ids))

    def can_allocate(self, req: Request, num_tokens: int) -> bool:
        """For admitting a waiting request: keeps a watermark of blocks free, so the
        running requests can still grow before anyone must be preempted."""
        needed = self.blocks_needed(req, num_tokens)
        return needed <= self.num_free_blocks - self.watermark_blocks

    def can_append(self, req: Request, num_tokens: int) -> bool:
        """For growing a running request: may use the watermark."""
        return self.blocks_needed(req, num_tokens) <= self.num_free_blocks

    def allocate(self, req: Request, num_tokens: int) -> list[int]:
        """Grows req's block list to hold num_tokens; returns the new block ids."""
        needed = self.blocks_needed(req, num_tokens)
        if needed > self.num_free_blocks:
            raise RuntimeError(
                f"out of KV blocks: need {needed}, {self.num_free_blocks} free"
            )
        new = [self._free.popleft() for _ in range(needed)]
        req.block_ids.extend(new)
        return new

    def free(self, req: Request) -> None:
        self._free.extend(req.block_ids)
        req.block_ids = []
