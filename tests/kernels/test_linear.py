"""The few-row linear kernel (torch.ops._C.linear) against an fp64 reference.

Tolerance: any fp32 dot product of length K, in any summation order, is within
K * 2^-24 * sum_k |x_k w_k| of the exact value (each of at most K roundings
adds at most one unit roundoff of a partial sum bounded by that sum). The
kernel (8 lanes, then across them) and F.linear (whatever blocking the BLAS
picks) both satisfy it, so it is the bound checked, per element, with an exact
fp64 reference; it allows the kernel's order, not a wrong product.
"""

import pytest
import torch
import torch.nn.functional as F

from vllm import _custom_ops as ops

U32 = 2.0**-24  # fp32 unit roundoff
U16 = 2.0**-8  # bf16 unit roundoff


def reference(x, w, b=None):  # [M, K], [N, K], [N] -> exact-ish [M, N], bound
    want = x.double() @ w.double().T
    scale = x.double().abs() @ w.double().abs().T
    if b is not None:
        want = want + b.double()
        scale = scale + b.double().abs()
    return want, scale


def assert_within_fp32_bound(out, x, w, b=None) -> None:
    want, scale = reference(x, w, b)
    k = x.shape[1] + 1  # + 1: the bias add
    err = (out.double() - want).abs()
    bound = k * U32 * scale + 1e-30
    assert bool((err <= bound).all()), f"max err/bound {(err / bound).max():.3f}"


def run_kernel(x, w, b=None):
    out = torch.empty(x.shape[0], w.shape[0], dtype=x.dtype)
    torch.ops._C.linear(out, x, w, b)
    return out


@pytest.mark.parametrize("m", list(range(1, 17)))
def test_every_row_count_up_to_16(m: int) -> None:
    # K = 577: 72 vectors plus a scalar tail; N = 37: 9 four-row tiles plus 1.
    x, w = torch.randn(m, 577), torch.randn(37, 577)
    assert_within_fp32_bound(run_kernel(x, w), x, w)


@pytest.mark.parametrize("seed", range(12))
def test_random_shapes_with_and_without_bias(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    m = int(torch.randint(1, 40, (1,), generator=g))
    k = int(torch.randint(1, 700, (1,), generator=g))
    n = int(torch.randint(1, 300, (1,), generator=g))
    x = torch.randn(m, k, generator=g) * 4
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if seed % 2 else None
    assert_within_fp32_bound(run_kernel(x, w, b), x, w, b)


def test_large_layer_splits_across_threads() -> None:
    # SmolLM2's gate/up shape: many tiles, so at::parallel_for splits it.
    x, w, b = torch.randn(5, 576), torch.randn(3072, 576), torch.randn(3072)
    assert_within_fp32_bound(run_kernel(x, w, b), x, w, b)


def test_rows_do_not_depend_on_the_batch() -> None:
    """Each output is one dot product in a fixed order, whatever M or the tiling:
    a row computed alone equals the same row computed in a batch, bit for bit."""
    x, w = torch.randn(16, 300), torch.randn(45, 300)
    batched = run_kernel(x, w)
    for i in (0, 5, 14, 15):
        assert torch.equal(run_kernel(x[i : i + 1], w), batched[i : i + 1])


def test_strided_rows_in_and_out() -> None:
    big = torch.randn(6, 3 * 64)
    x = big[:, 64:128]  # row stride 192, dense rows
    w = torch.randn(10, 64)
    out_big = torch.full((6, 25), float("nan"))
    out = out_big[:, 5:15]
    torch.ops._C.linear(out, x, w, None)
    assert_within_fp32_bound(out, x, w)
    assert bool(out_big[:, :5].isnan().all()) and bool(out_big[:, 15:].isnan().all())


def test_bf16_rounds_once_from_fp32_sums() -> None:
    x = torch.randn(3, 200).bfloat16()
    w = torch.randn(20, 200).bfloat16()
    b = torch.randn(20).bfloat16()
    out = run_kernel(x, w, b)
    want, scale = reference(x, w, b)
    err = (out.double() - want).abs()
    assert bool((err <= U16 * want.abs() + 201 * U32 * scale).all())


@pytest.mark.parametrize(
    "x, w, b, match",
    [
        (torch.randn(8, 4).t(), torch.randn(3, 8), None, "x must be contiguous"),
        (torch.randn(2, 8), torch.randn(3, 9), None, "input features"),
        (torch.randn(2, 8), torch.randn(3, 8).double(), None, "weight has dtype"),
        (torch.randn(2, 8).bfloat16(), torch.randn(3, 8).half(), None, "weight has"),
        (torch.randn(2, 8), torch.randn(3, 8), torch.randn(4), "bias must be"),
    ],
)
def test_rejects_bad_arguments(x, w, b, match: str) -> None:
    out = torch.empty(x.shape[0], w.shape[0])
    with pytest.raises(RuntimeError, match=match):
        torch.ops._C.linear(out, x, w, b)


def test_wrapper_uses_kernel_only_for_few_dense_rows(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(
        ops, "_torch_linear", lambda *a: calls.append(1) or F.linear(*a)
    )
    w, b = torch.randn(24, 40), torch.randn(24)
    few = torch.randn(ops.LINEAR_KERNEL_MAX_ROWS, 40)
    many = torch.randn(ops.LINEAR_KERNEL_MAX_ROWS + 1, 40)
    cols = torch.randn(40, 3).t()  # rows not dense: F.linear
    assert_within_fp32_bound(ops.linear(few, w, b), few, w, b)
    assert calls == []
    for x, kernels in ((few, False), (many, True), (cols, True)):
        assert torch.equal(ops.linear(x, w, b, kernels), F.linear(x, w, b))
    assert len(calls) == 3


@pytest.mark.parametrize("wdtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 5, 33])
def test_16bit_weights_widen_exactly(wdtype, m: int) -> None:
    # fp32 x with 16-bit weights (--dtype float16 on CPU): widening is exact, so
    # the result must be the fp32 kernel's on the widened weights, bit for bit,
    # in the kernel and through the wrapper's F.linear path alike.
    x = torch.randn(m, 200)
    w16, b = torch.randn(70, 200).to(wdtype), torch.randn(70)
    got = run_kernel(x, w16, b)
    assert torch.equal(got, run_kernel(x, w16.float(), b))
    assert_within_fp32_bound(got, x, w16.float(), b)
    assert torch.equal(ops.linear(x, w16, b), got)
    many = torch.randn(ops.LINEAR_KERNEL_MAX_ROWS + 3, 200)
    assert torch.equal(ops.linear(many, w16, b), F.linear(many, w16.float(), b))
