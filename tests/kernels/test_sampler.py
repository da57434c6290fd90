"""The CDF-inversion sampler (torch.ops._C.sample_from_logits) against an fp64
inversion and against its pure-torch reference.

A drawn token k is right when the fp64 CDF of softmax(logits / t) brackets the
point: cdf[k-1] < u <= cdf[k], up to fp32 rounding of the weights (1e-5 of the
total is generous for a 50k vocabulary yet far below any token's width in these
rows). Masked (-inf) tokens must never come out, whatever the point.
"""

import pytest
import torch

from vllm import _custom_ops as ops

INF = float("inf")


def draw(logits, temperature, points, kernels=True):
    tokens = torch.full((logits.shape[0],), -7, dtype=torch.long)
    ops.sample_from_logits(tokens, logits, temperature, points, kernels)
    return tokens


def assert_inverts_cdf(tokens, logits, temperature, points, tol=1e-5):
    probs = torch.softmax(logits.double() / temperature.double().unsqueeze(1), -1)
    cdf = probs.cumsum(-1)
    for r, k in enumerate(tokens.tolist()):
        assert 0 <= k < logits.shape[1]
        assert probs[r, k] > 0, f"row {r} drew a masked token {k}"
        before = float(cdf[r, k - 1]) if k else 0.0
        u = float(points[r])
        assert before - tol < u <= float(cdf[r, k]) + tol, (r, k, before, u)


@pytest.mark.parametrize("rows,vocab", [(1, 5), (37, 1013), (8, 49152)])
@pytest.mark.parametrize("kernels", [True, False])
def test_random_rows_invert_their_cdf(rows, vocab, kernels):
    logits = torch.randn(rows, vocab) * 4
    temperature = torch.rand(rows) * 1.7 + 0.3
    points = torch.rand(rows, dtype=torch.float64).clamp_(min=2.0**-53)
    tokens = draw(logits, temperature, points, kernels)
    assert_inverts_cdf(tokens, logits, temperature, points)


def test_kernel_draws_the_references_tokens():
    logits = torch.randn(64, 49152) * 3
    temperature = torch.rand(64) + 0.5
    points = torch.rand(64, dtype=torch.float64).clamp_(min=2.0**-53)
    kernel = draw(logits, temperature, points, kernels=True)
    reference = draw(logits, temperature, points, kernels=False)
    assert kernel.tolist() == reference.tolist()


def test_masked_tokens_are_never_drawn_even_at_the_ends():
    vocab = 300
    logits = torch.randn(4, vocab)
    logits[:, :10] = -INF  # the first tokens: what a point near 0 would hit
    logits[:, -10:] = -INF  # the last ones: what a point of 1 would hit
    logits[1, 150:] = -INF
    temperature = torch.ones(4)
    for u in (2.0**-53, 0.5, 1.0):
        points = torch.full((4,), u, dtype=torch.float64)
        tokens = draw(logits, temperature, points)
        assert_inverts_cdf(tokens, logits, temperature, points)
    assert draw(logits, temperature, torch.ones(4, dtype=torch.float64))[1] < 150
    assert (
        draw(logits, temperature, torch.full((4,), 2.0**-53, dtype=torch.float64))[0]
        == 10
    )


def test_one_live_token_is_always_drawn():
    logits = torch.full((3, 4099), -INF)
    live = [0, 2048, 4098]
    for r, k in enumerate(live):
        logits[r, k] = -3.0
    for u in (2.0**-53, 0.3, 1.0):
        points = torch.full((3,), u, dtype=torch.float64)
        assert draw(logits, torch.full((3,), 0.7), points).tolist() == live


def test_negligible_tokens_only_at_the_extreme_point():
    # Weights below e^-87 of the top token count as zero; one token dominates.
    logits = torch.zeros(2, 1000)
    logits[:, 777] = 200.0
    points = torch.tensor([2.0**-53, 1.0], dtype=torch.float64)
    assert draw(logits, torch.ones(2), points).tolist() == [777, 777]


def test_low_temperature_sharpens_and_high_flattens():
    logits = torch.arange(8, dtype=torch.float32).repeat(2, 1)  # token 7 is top
    points = torch.full((2,), 0.05, dtype=torch.float64)
    cold, hot = draw(logits, torch.tensor([0.05, 50.0]), points).tolist()
    assert cold == 7  # nearly all the mass on the top token
    assert hot == 0  # nearly uniform: 5% lands in the first bin
