import pytest
import torch

EPS = 1e-6


def ref_rms_norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # [T, H], [H]
    rows = []
    for row in x.float():
        rms = torch.sqrt((row * row).sum() / row.numel() + EPS)
        rows.append(row / rms * w.float())
    return torch.stack(rows)


@pytest.mark.parametrize("tokens", [1, 7, 33, 600])  # 600: split across threads
@pytest.mark.parametrize("hidden", [64, 576, 1000])  # 1000: non-vector tail
def test_rms_norm_fp32(tokens: int, hidden: int) -> None:
    x = torch.randn(tokens, hidden) * 3
    w = torch.randn(hidden)
    out = torch.empty_like(x)
    torch.ops._C.rms_norm(out, x, w, EPS)
    torch.testing.assert_close(out, ref_rms_norm(x, w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hidden", [64, 1000])
def test_fused_add_rms_norm_fp32(hidden: int) -> None:
    x = torch.randn(11, hidden)
    residual = torch.randn(11, hidden)
    w = torch.randn(hidden)
    want_residual = x + residual
    want_x = ref_rms_norm(want_residual, w)
    torch.ops._C.fused_add_rms_norm(x, residual, w, EPS)
    torch.testing.assert_close(residual, want_residual, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x, want_x, rtol=1e-5, atol=1e-5)


def test_rms_norm_strided_input() -> None:
    qkv = torch.randn(6, 3 * 128)
    x = qkv[:, 128:256]  # a middle slice: row stride 384
    w = torch.randn(128)
    out = torch.empty(6, 128)
    torch.ops._C.rms_norm(out, x, w, EPS)
    torch.testing.assert_close(out, ref_rms_norm(x, w), rtol=1e-5, atol=1e-5)


def test_rms_norm_bf16() -> None:
    x = torch.randn(5, 200).bfloat16()
    w = torch.randn(200).bfloat16()
    out = torch.empty_like(x)
    torch.ops._C.rms_norm(out, x, w, EPS)
    torch.testing.assert_close(out.float(), ref_rms_norm(x, w), rtol=2e-2, atol=2e-2)


def test_rms_norm_rejects_mismatched_weight() -> None:
    x = torch.randn(2, 64)
    with pytest.raises(RuntimeError, match="weight"):
        torch.ops._C.rms_norm(torch.empty_like(x), x, torch.randn(32), EPS)
