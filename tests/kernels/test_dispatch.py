"""The public ops in vllm._custom_ops pick the kernel or the torch code."""

import pytest
import torch

from vllm import _custom_ops as ops


@pytest.mark.parametrize("use_kernels", [True, False])
def test_wrapper_dispatch_follows_flag(monkeypatch, use_kernels: bool) -> None:
    calls = []
    torch_impl = ops._torch_silu_and_mul
    monkeypatch.setattr(
        ops, "_torch_silu_and_mul", lambda *a: calls.append(1) or torch_impl(*a)
    )
    x = torch.randn(3, 32)
    out = torch.empty(3, 16)
    ops.silu_and_mul(out, x, kernels=use_kernels)
    assert len(calls) == (0 if use_kernels else 1)
    torch.testing.assert_close(out, torch.nn.functional.silu(x[:, :16]) * x[:, 16:])


def test_unsupported_dtype_falls_back_to_torch() -> None:
    x = torch.randn(2, 64, dtype=torch.float64)
    out = torch.empty_like(x)
    w = torch.ones(64, dtype=torch.float64)
    ops.rms_norm(out, x, w, 1e-6)  # the kernel would reject float64
    want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    # The torch path normalises in fp32 whatever the input dtype.
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_env_flag_reaches_every_layer_once(monkeypatch, tiny_model) -> None:
    """VLLM_USE_CUSTOM_KERNELS is read once into the config, and every layer
    that calls an op carries that choice."""
    from vllm import EngineArgs
    from vllm.distributed.parallel_state import TensorParallelGroup
    from vllm.model_executor.model_loader.loader import get_model

    for env, want in (("0", False), ("1", True)):
        monkeypatch.setenv("VLLM_USE_CUSTOM_KERNELS", env)
        config = EngineArgs(model=tiny_model("llama_gqa")).create_engine_config()
        monkeypatch.delenv("VLLM_USE_CUSTOM_KERNELS")  # read once: no effect now
        assert config.model_config.use_custom_kernels is want
        model = get_model(config.model_config, TensorParallelGroup())
        flags = [m.kernels for m in model.modules() if hasattr(m, "kernels")]
        kinds = {type(m).__name__ for m in model.modules() if hasattr(m, "kernels")}
        assert kinds == {
            "Attention",
            "RMSNorm",
            "RotaryEmbedding",
            "SiluAndMul",
            "QKVParallelLinear",
            "RowParallelLinear",
            "MergedColumnParallelLinear",
            "ParallelLMHead",
        }
        assert set(flags) == {want}
