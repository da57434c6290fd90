import pytest
import torch

from vllm import _custom_ops as ops


def ref_reshape_and_cache(key, value, key_cache, value_cache, slots):
    block_size = key_cache.shape[2]
    for t, slot in enumerate(slots.tolist()):
        if slot < 0:
            continue
        key_cache[slot // block_size, :, slot % block_size] = key[t]
        value_cache[slot // block_size, :, slot % block_size] = value[t]


@pytest.mark.parametrize("impl", ["kernel", "torch"])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("head_size", [64, 128])
def test_reshape_and_cache(impl: str, block_size: int, head_size: int) -> None:
    tokens, heads, num_blocks = 37, 3, 8
    qkv = torch.randn(tokens, 3 * heads * head_size)
    # key/value are strided views of a fused qkv output.
    _, key, value = qkv.view(tokens, 3 * heads, head_size).split(heads, dim=1)
    key_cache = torch.randn(num_blocks, heads, block_size, head_size)
    value_cache = torch.randn(num_blocks, heads, block_size, head_size)
    slots = torch.randperm(num_blocks * block_size)[:tokens]
    slots[::5] = -1  # padding tokens are skipped
    want_k, want_v = key_cache.clone(), value_cache.clone()
    ref_reshape_and_cache(key, value, want_k, want_v, slots)
    fn = (
        torch.ops._C.reshape_and_cache
        if impl == "kernel"
        else ops._torch_reshape_and_cache
    )
    fn(key, value, key_cache, value_cache, slots)
    # Exact copies, and every slot not written keeps its old contents.
    assert torch.equal(key_cache, want_k)
    assert torch.equal(value_cache, want_v)


def test_reshape_and_cache_rejects_slot_past_cache() -> None:
    key = torch.randn(1, 2, 64)
    cache = torch.zeros(2, 2, 16, 64)
    with pytest.raises(RuntimeError, match="past the cache"):
        torch.ops._C.reshape_and_cache(
            key, key, cache, cache.clone(), torch.tensor([32])
        )
