import pytest
import torch


def ref_silu_and_mul(x: torch.Tensor) -> torch.Tensor:  # [T, 2I] -> [T, I]
    gate, up = x.float().chunk(2, dim=-1)
    return gate / (1.0 + torch.exp(-gate)) * up


@pytest.mark.parametrize("tokens", [1, 7, 40, 200])  # 200 x 1536: threaded
@pytest.mark.parametrize("inter", [64, 100, 1536])  # 100 leaves a non-vector tail
def test_silu_and_mul_fp32(tokens: int, inter: int) -> None:
    x = torch.randn(tokens, 2 * inter) * 4
    out = torch.empty(tokens, inter)
    torch.ops._C.silu_and_mul(out, x)
    torch.testing.assert_close(out, ref_silu_and_mul(x), rtol=1e-5, atol=1e-5)


def test_silu_and_mul_extreme_gates() -> None:
    # Gates far outside the range where exp stays finite must not give nan/inf.
    gate = torch.tensor([[-200.0, -90.0, -20.0, 0.0, 20.0, 90.0, 200.0, 1e-3]])
    x = torch.cat([gate, torch.full_like(gate, 2.0)], dim=-1)
    out = torch.empty_like(gate)
    torch.ops._C.silu_and_mul(out, x)
    torch.testing.assert_close(out, ref_silu_and_mul(x), rtol=1e-5, atol=1e-5)


def test_silu_and_mul_strided_rows() -> None:
    wide = torch.randn(5, 2 * 72 + 16)
    x = wide[:, : 2 * 72]  # row stride larger than the row
    out_wide = torch.zeros(5, 80)
    out = out_wide[:, :72]
    torch.ops._C.silu_and_mul(out, x)
    torch.testing.assert_close(out, ref_silu_and_mul(x), rtol=1e-5, atol=1e-5)
    assert torch.all(out_wide[:, 72:] == 0)  # nothing written past the view


def test_silu_and_mul_bf16() -> None:
    x = torch.randn(9, 2 * 136).bfloat16()
    out = torch.empty(9, 136, dtype=torch.bfloat16)
    torch.ops._C.silu_and_mul(out, x)
    torch.testing.assert_close(out.float(), ref_silu_and_mul(x), rtol=2e-2, atol=2e-2)
