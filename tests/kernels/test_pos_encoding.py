import pytest
import torch


def make_cos_sin_cache(max_pos: int, rot_dim: int) -> torch.Tensor:
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rot_dim, 2).float() / rot_dim))
    freqs = torch.outer(torch.arange(max_pos).float(), inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)  # [max_pos, rot_dim]


def ref_rotate(x, positions, head_size, cache, is_neox):  # x: [T, H * D]
    """Rotates each (token, head) with explicit pair indices."""
    out = x.clone()
    half = cache.shape[1] // 2
    for t in range(x.shape[0]):
        cos, sin = cache[positions[t], :half], cache[positions[t], half:]
        for h in range(x.shape[1] // head_size):
            base = h * head_size
            for i in range(half):
                a, b = (i, i + half) if is_neox else (2 * i, 2 * i + 1)
                x1, x2 = x[t, base + a], x[t, base + b]
                out[t, base + a] = x1 * cos[i] - x2 * sin[i]
                out[t, base + b] = x2 * cos[i] + x1 * sin[i]
    return out


@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize("head_size,rot_dim", [(64, 64), (128, 128), (64, 32)])
def test_rotary_on_fused_qkv_views(is_neox: bool, head_size: int, rot_dim: int) -> None:
    tokens, hq, hkv = 5, 3, 1
    qkv = torch.randn(tokens, (hq + 2 * hkv) * head_size)
    # query/key are strided views into qkv, as the attention layer produces them.
    query, key, value = qkv.split(
        [hq * head_size, hkv * head_size, hkv * head_size], -1
    )
    cache = make_cos_sin_cache(64, rot_dim)
    positions = torch.randint(0, 64, (tokens,))
    want_q = ref_rotate(query, positions, head_size, cache, is_neox)
    want_k = ref_rotate(key, positions, head_size, cache, is_neox)
    value_before = value.clone()
    torch.ops._C.rotary_embedding(positions, query, key, head_size, cache, is_neox)
    torch.testing.assert_close(query, want_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(key, want_k, rtol=1e-5, atol=1e-5)
    assert torch.equal(value, value_before)


def test_rotary_bf16_with_fp32_cache() -> None:
    query = torch.randn(4, 2 * 64).bfloat16()
    key = torch.randn(4, 64).bfloat16()
    cache = make_cos_sin_cache(16, 64)
    positions = torch.tensor([0, 3, 15, 7])
    want_q = ref_rotate(query.float(), positions, 64, cache, True)
    want_k = ref_rotate(key.float(), positions, 64, cache, True)
    torch.ops._C.rotary_embedding(positions, query, key, 64, cache, True)
    torch.testing.assert_close(query.float(), want_q, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(key.float(), want_k, rtol=2e-2, atol=2e-2)


def test_rotary_rejects_position_past_cache() -> None:
    query, key = torch.randn(1, 64), torch.randn(1, 64)
    with pytest.raises(RuntimeError, match="outside cos_sin_cache"):
        torch.ops._C.rotary_embedding(
            torch.tensor([16]), query, key, 64, make_cos_sin_cache(16, 64), True
        )


def test_rotary_accepts_per_head_views() -> None:
    # [T, H, D] views of a fused qkv output rotate like their [T, H * D] form.
    tokens, head_size = 4, 64
    qkv = torch.randn(tokens, 4, head_size)
    query, key = qkv[:, :2], qkv[:, 2:3]
    cache = make_cos_sin_cache(32, head_size)
    positions = torch.tensor([1, 30, 2, 9])
    want_q = ref_rotate(query.reshape(tokens, -1), positions, head_size, cache, True)
    want_k = ref_rotate(key.reshape(tokens, -1), positions, head_size, cache, True)
    torch.ops._C.rotary_embedding(positions, query, key, head_size, cache, True)
    torch.testing.assert_close(query.reshape(tokens, -1), want_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(key.reshape(tokens, -1), want_k, rtol=1e-5, atol=1e-5)


def test_rotary_rejects_rows_it_cannot_write_in_place() -> None:
    query = torch.randn(3, 128)[:, ::2]  # every other element: not dense
    key = torch.randn(3, 64)
    with pytest.raises(RuntimeError, match="dense"):
        torch.ops._C.rotary_embedding(
            torch.zeros(3, dtype=torch.long),
            query,
            key,
            64,
            make_cos_sin_cache(4, 64),
            True,
        )
