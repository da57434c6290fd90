"""The public ops in vllm._custom_ops pick the kernel or the torch code."""

import pytest
import torch

from vllm import _custom_ops as ops


@pytest.mark.parametrize("use_kernels", ["1", "0"])
def test_wrapper_dispatch_follows_env(monkeypatch, use_kernels: str) -> None:
    calls = []
    torch_impl = ops._torch_silu_and_mul
    monkeypatch.setattr(
        ops, "_torch_silu_and_mul", lambda *a: calls.append(1) or torch_impl(*a)
    )
    monkeypatch.setenv("VLLM_USE_CUSTOM_KERNELS", use_kernels)
    x = torch.randn(3, 32)
    out = torch.empty(3, 16)
    ops.silu_and_mul(out, x)
    assert len(calls) == (0 if use_kernels == "1" else 1)
    torch.testing.assert_close(out, torch.nn.functional.silu(x[:, :16]) * x[:, 16:])


def test_unsupported_dtype_falls_back_to_torch() -> None:
    x = torch.randn(2, 64, dtype=torch.float64)
    out = torch.empty_like(x)
    w = torch.ones(64, dtype=torch.float64)
    ops.rms_norm(out, x, w, 1e-6)  # the kernel would reject float64
    want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    # The torch path normalises in fp32 whatever the input dtype.
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
