import math

import pytest

from tests.engine.factories import make_request
from vllm.engine.block_manager import BlockManager


@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_allocation_grows_to_ceil_tokens_over_block_size(block_size):
    bm = BlockManager(num_blocks=100, block_size=block_size, watermark=0.0)
    req = make_request("a", 1)
    held = []
    for num_tokens in [1, 2, 3, 4, 5, 15, 16, 17, 33, 40]:
        new = bm.allocate(req, num_tokens)
        held += new
        assert len(req.block_ids) == math.ceil(num_tokens / block_size)
        # New ids are appended; earlier ones keep their place.
        assert req.block_ids == held
    assert bm.num_free_blocks == 100 - len(req.block_ids)


def test_blocks_needed_counts_only_missing_blocks():
    bm = BlockManager(num_blocks=10, block_size=4, watermark=0.0)
    req = make_request("a", 1)
    assert bm.blocks_needed(req, 9) == 3
    bm.allocate(req, 5)
    assert bm.blocks_needed(req, 9) == 1
    assert bm.blocks_needed(req, 8) == 0
    assert bm.blocks_needed(req, 1) == 0


def test_block_list_never_shrinks_until_freed():
    bm = BlockManager(num_blocks=10, block_size=4, watermark=0.0)
    req = make_request("a", 1)
    bm.allocate(req, 12)
    before = list(req.block_ids)
    assert bm.allocate(req, 3) == []
    assert req.block_ids == before
    assert bm.num_free_blocks == 7


def test_free_returns_every_block():
    bm = BlockManager(num_blocks=10, block_size=4, watermark=0.0)
    a, b = make_request("a", 1), make_request("b", 1)
    bm.allocate(a, 10)
    bm.allocate(b, 7)
    assert bm.num_free_blocks == 5
    a_blocks = set(a.block_ids)
    assert not a_blocks & set(b.block_ids)
    bm.free(a)
    assert a.block_ids == []
    assert bm.num_free_blocks == 8
    # The freed ids can be handed out again, and nothing is handed out twice.
    c = make_request("c", 1)
    bm.allocate(c, 32)
    assert a_blocks <= set(c.block_ids)
    assert not set(c.block_ids) & set(b.block_ids)
    assert bm.num_free_blocks == 0


def test_out_of_blocks_raises_and_allocates_nothing():
    bm = BlockManager(num_blocks=3, block_size=4, watermark=0.0)
    req = make_request("a", 1)
    bm.allocate(req, 4)
    with pytest.raises(RuntimeError, match="out of KV blocks"):
        bm.allocate(req, 16)
    assert len(req.block_ids) == 1
    assert bm.num_free_blocks == 2
    # Exactly what is left still fits.
    bm.allocate(req, 12)
    assert bm.num_free_blocks == 0


def test_can_allocate_keeps_the_watermark_can_append_may_use_it():
    # watermark 0.2 of 10 blocks: 2 blocks are held back from admissions.
    bm = BlockManager(num_blocks=10, block_size=4, watermark=0.2)
    runner, newcomer = make_request("run", 1), make_request("new", 1)
    bm.allocate(runner, 20)  # 5 blocks, 5 free
    assert bm.can_allocate(newcomer, 12)  # 3 blocks leaves 2 free
    assert not bm.can_allocate(newcomer, 13)  # 4 blocks would eat the watermark
    assert bm.can_append(runner, 20 + 5 * 4)  # growing may use all 5
    assert not bm.can_append(runner, 20 + 5 * 4 + 1)


def test_can_checks_count_blocks_already_held():
    bm = BlockManager(num_blocks=4, block_size=4, watermark=0.0)
    req = make_request("a", 1)
    bm.allocate(req, 8)  # 2 held, 2 free
    assert bm.can_append(req, 16)
    assert bm.can_allocate(req, 16)
    assert not bm.can_append(req, 17)
