"""Paged KV-cache bookkeeping in the engine: which blocks each request holds.

The KV tensors themselves live in the workers; this only hands out block ids.
A request's block list only grows until the request is freed.

With prefix caching, a block whose tokens are all computed is registered under a
key: (id of the token prefix before it, its own tokens). Each new key gets a fresh
integer id, so by induction an id names exactly one token prefix, from position 0 to
the end of its block. A new request walks its tokens block by block and reuses every
registered block of its prefix. The dict hashes the key but compares it exactly, so
a hash collision costs a probe, never a wrong hit. Blocks are reference counted;
a registered block nobody holds stays findable until it is needed for new data,
the least recently released first.
"""

import itertools
from collections import OrderedDict, deque
from collections.abc import Sequence

from vllm.engine.request import Request

# (prefix id of the blocks before, this block's tokens); the first block's parent
# is _ROOT, or below it for a LoRA adapter: the same tokens through another
# adapter have other KV.
BlockKey = tuple[int, tuple[int, ...]]
_ROOT = -1


def _root(req: Request) -> int:
    return _ROOT - req.lora_int_id


class BlockManager:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        watermark: float = 0.01,
        enable_caching: bool = False,
    ):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.watermark_blocks = int(watermark * num_blocks)
        self.enable_caching = enable_caching
        self._ref = [0] * num_blocks  # requests holding each block
        # Free blocks holding nothing reusable: handed out first.
        self._free: deque[int] = deque(range(num_blocks))
        # Free registered blocks, least recently released first: evicted in
        # this order when _free runs dry.
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._table: dict[BlockKey, tuple[int, int]] = {}  # key -> (block, prefix id)
        self._entry: dict[int, tuple[BlockKey, int]] = {}  # block -> (key, prefix id)
        self._prefix_ids = itertools.count()

    @property
    def num_free_blocks(self) -> int:
        """Blocks no request holds, cached ones included."""
        return len(self._free) + len(self._evictable)

    @property
    def num_cached_blocks(self) -> int:
        """Registered blocks, held or not."""
        return len(self._entry)

    def ref_count(self, block: int) -> int:
        return self._ref[block]

    def blocks_needed(
        self, req: Request, num_tokens: int, cached: Sequence[int] = ()
    ) -> int:
        """Free blocks req takes to hold num_tokens tokens in total, with the
        blocks in ``cached`` (a lookup hit) as its first ones: a hit block that
        nobody holds is taken from the free pool too."""
        held = len(req.block_ids) + len(cached)
        new = max(0, -(-num_tokens // self.block_size) - held)
        return new + sum(1 for b in cached if self._ref[b] == 0)

    def can_allocate(
        self, req: Request, num_tokens: int, cached: Sequence[int] = ()
    ) -> bool:
        """For admitting a waiting request: keeps a watermark of blocks free, so the
        running requests can still grow before anyone must be preempted."""
        needed = self.blocks_needed(req, num_tokens, cached)
        return needed <= self.num_free_blocks - self.watermark_blocks

    def can_append(
        self, req: Request, num_tokens: int, cached: Sequence[int] = ()
    ) -> bool:
        """For growing a running request: may use the watermark."""
        return self.blocks_needed(req, num_tokens, cached) <= self.num_free_blocks

    def allocate(
        self, req: Request, num_tokens: int, cached: Sequence[int] = ()
    ) -> list[int]:
        """Grows req's block list to hold num_tokens, starting from the hit
        ``cached`` for a request that holds no block yet; returns the new
        (uncached) block ids."""
        needed = self.blocks_needed(req, num_tokens, cached)
        if needed > self.num_free_blocks:
            raise RuntimeError(
                f"out of KV blocks: need {needed}, {self.num_free_blocks} free"
            )
        assert not (cached and req.block_ids), "a cached prefix starts a block list"
        for block in cached:
            if self._ref[block] == 0:
                del self._evictable[block]
            self._ref[block] += 1
            req.block_ids.append(block)
            req.prefix_ids.append(self._entry[block][1])
        count = -(-num_tokens // self.block_size) - len(req.block_ids)
        new = [self._take_free() for _ in range(count)]
        req.block_ids.extend(new)
        return new

    def _take_free(self) -> int:
        if self._free:
            block = self._free.popleft()
        else:
            block, _ = self._evictable.popitem(last=False)
            key, _ = self._entry.pop(block)
            del self._table[key]
        self._ref[block] = 1
        return block

    def free(self, req: Request) -> None:
        """Drops req's references. Its last blocks are released first, so they are
        evicted before its first ones, which other requests are likelier to
        share."""
        for block in reversed(req.block_ids):
            self._ref[block] -= 1
            if self._ref[block] == 0:
                if block in self._entry:
                    self._evictable[block] = None
                else:
                    self._free.append(block)
        req.block_ids = []
        req.prefix_ids = []

    def lookup(self, req: Request) -> tuple[list[int], BlockKey | None]:
        """-> (registered blocks holding the longest cached prefix of req's
        tokens, key of the first full block that missed, or None). The last
        token is never served from the cache, so the step that computes it
        samples."""
        if not self.enable_caching:
            return [], None
        tokens, parent, hits = req.all_token_ids, _root(req), []
        for j in range((len(tokens) - 1) // self.block_size):
            key = self._key(tokens, j, parent)
            found = self._table.get(key)
            if found is None:
                return hits, key
            block, parent = found
            hits.append(block)
        return hits, None

    def next_key(self, req: Request, num_tokens: int) -> BlockKey | None:
        """Key of the first block req will register once num_tokens are computed
        (None if no block fills by then)."""
        j, num_tokens = len(req.prefix_ids), min(num_tokens, req.num_known_tokens)
        if not self.enable_caching or (j + 1) * self.block_size > num_tokens:
            return None
        return self._key(req.all_token_ids, j, req.prefix_ids[-1] if j else _root(req))

    def cache_full_blocks(self, req: Request) -> None:
        """Registers req's blocks that are full of computed tokens (prompt or
        output). A block whose key is already registered elsewhere stays private:
        req's chain continues from the registered one's prefix id."""
        if not self.enable_caching:
            return
        # Under async scheduling num_computed_tokens may count a token still
        # unknown here; a block is only keyed by tokens the engine knows. (A
        # block registered while its last step is in flight is safe: any
        # request that hits it runs in a later step.)
        computed = min(req.num_computed_tokens, req.num_known_tokens)
        full = min(computed // self.block_size, len(req.block_ids))
        if len(req.prefix_ids) >= full:
            return
        tokens = req.all_token_ids
        for j in range(len(req.prefix_ids), full):
            key = self._key(tokens, j, req.prefix_ids[-1] if j else _root(req))
            found = self._table.get(key)
            if found is None:
                block, prefix_id = req.block_ids[j], next(self._prefix_ids)
                self._table[key] = (block, prefix_id)
                self._entry[block] = (key, prefix_id)
            else:
                prefix_id = found[1]
            req.prefix_ids.append(prefix_id)

    def _key(self, tokens: list[int], j: int, parent: int) -> BlockKey:
        bs = self.block_size
        return parent, tuple(tokens[j * bs : (j + 1) * bs])
