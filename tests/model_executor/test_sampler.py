import math
from dataclasses import dataclass, field

import pytest
import torch

from vllm.messages import SamplingOptions
from vllm.model_executor.layers.sampler import logprobs_at, sample


@dataclass
class Row:
    sampling: SamplingOptions
    token_ids: list[int] = field(default_factory=lambda: [0, 1, 2])
    num_prompt_tokens: int = 3


def _probs(*p: float) -> torch.Tensor:  # [V] logits whose softmax is p
    return torch.tensor(p, dtype=torch.float32).log()


def _draw(logits: torch.Tensor, n: int = 2000, **opts) -> list[int]:
    """One token from each of n rows sharing logits [V], seeds 0..n-1."""
    rows = [Row(SamplingOptions(seed=s, **opts)) for s in range(n)]
    tokens, _ = sample(logits.expand(n, -1).clone(), rows)
    return tokens


def _chi_square(tokens: list[int], probs: torch.Tensor) -> float:
    counts = torch.bincount(torch.tensor(tokens), minlength=len(probs)).double()
    expected = probs.double() * len(tokens)
    return float(((counts - expected) ** 2 / expected).sum())


def test_greedy_is_argmax():
    torch.manual_seed(0)
    logits = torch.randn(6, 50)
    rows = [Row(SamplingOptions(seed=i, temperature=0.0)) for i in range(6)]
    tokens, logprobs = sample(logits.clone(), rows)
    assert tokens == logits.argmax(-1).tolist()
    assert logprobs == [None] * 6


def test_top_k_samples_only_the_k_best():
    torch.manual_seed(1)
    logits = torch.randn(40)
    best = set(logits.topk(3).indices.tolist())
    assert set(_draw(logits, 500, top_k=3)) == best


def test_top_k_larger_than_vocab_means_no_top_k():
    # SamplingParams accepts any top_k >= 1; the sampler cannot know it exceeds
    # the vocabulary until it sees the logits.
    logits = _probs(0.4, 0.3, 0.2, 0.1)
    assert _draw(logits, 200, top_k=50) == _draw(logits, 200)


@pytest.mark.parametrize("top_p,nucleus", [(0.75, {0, 1}), (0.85, {0, 1, 2})])
def test_top_p_keeps_smallest_nucleus(top_p, nucleus):
    # Shuffled order so the nucleus is not simply a prefix of the vocabulary.
    logits = _probs(0.05, 0.3, 0.5, 0.15)[[2, 1, 3, 0]]
    tokens = _draw(logits, 1000, top_p=top_p)
    assert set(tokens) == nucleus


def test_top_p_one_token_when_it_alone_reaches_p():
    logits = _probs(0.1, 0.7, 0.2)
    assert set(_draw(logits, 300, top_p=0.6)) == {1}


@pytest.mark.parametrize("min_p,kept", [(0.2, {0, 1, 2}), (0.5, {0, 1})])
def test_min_p_drops_tokens_below_fraction_of_best(min_p, kept):
    logits = _probs(0.5, 0.3, 0.15, 0.05)
    assert set(_draw(logits, 1000, min_p=min_p)) == kept


def test_samples_follow_softmax():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 0.3])
    tokens = _draw(logits, 4000)
    # 5 degrees of freedom: P(chi2 > 20.5) is about 0.001.
    assert _chi_square(tokens, logits.softmax(-1)) < 20.5


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_scales_logits(temperature):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 0.3])
    tokens = _draw(logits, 4000, temperature=temperature)
    assert _chi_square(tokens, (logits / temperature).softmax(-1)) < 20.5
    # And it is not just the untempered distribution.
    assert _chi_square(tokens, logits.softmax(-1)) > 50


def test_same_seed_and_index_gives_same_token_in_any_batch():
    torch.manual_seed(2)
    logits = torch.randn(3, 500)
    mine = [
        Row(SamplingOptions(seed=42 + i), token_ids=[5] * (3 + i)) for i in range(3)
    ]
    alone = [sample(logits[i : i + 1].clone(), [mine[i]])[0][0] for i in range(3)]
    others = [Row(SamplingOptions(seed=7, top_k=5)), Row(SamplingOptions(seed=8))]
    batch = torch.cat([torch.randn(1, 500), logits[2:3], logits[0:1], logits[1:2]])
    batch = torch.cat([batch, torch.randn(1, 500)])
    rows = [others[0], mine[2], mine[0], mine[1], others[1]]
    tokens, _ = sample(batch, rows)
    assert tokens[1:4] == [alone[2], alone[0], alone[1]]


def test_output_index_changes_the_draw():
    logits = torch.zeros(1000)  # uniform: any repeat is chance
    tokens = []
    for num_outputs in range(20):
        row = Row(SamplingOptions(seed=3), token_ids=[1, 2, 3] + [9] * num_outputs)
        tokens.append(sample(logits[None].clone(), [row])[0][0])
    assert len(set(tokens)) >= 17
    # The prompt length alone must not matter, only the output index.
    longer = Row(SamplingOptions(seed=3), token_ids=[1] * 10, num_prompt_tokens=10)
    assert sample(logits[None].clone(), [longer])[0][0] == tokens[0]


def test_same_seed_many_indices_follow_softmax():
    logits = torch.tensor([1.5, 0.0, -0.5, 0.7])
    rows = [
        Row(SamplingOptions(seed=5), token_ids=[0] + [1] * i, num_prompt_tokens=1)
        for i in range(3000)
    ]
    tokens, _ = sample(logits.expand(3000, -1).clone(), rows)
    # 3 degrees of freedom: P(chi2 > 16.3) is about 0.001.
    assert _chi_square(tokens, logits.softmax(-1)) < 16.3


# Penalties: logits mix signs so repetition's divide/multiply split shows.
_LOGITS = [1.0, -1.0, 2.0, -2.0, 0.5, 3.0, -0.5, 0.0]
_PROMPT, _OUTPUTS = [0, 1], [2, 3, 3]


def _penalised(**opts) -> list[float]:
    row = Row(SamplingOptions(seed=0, temperature=0.0, **opts), _PROMPT + _OUTPUTS, 2)
    logits = torch.tensor([_LOGITS])
    sample(logits, [row])  # penalties land in the logits in place
    return logits[0].tolist()


def test_repetition_penalty_divides_positive_multiplies_negative():
    seen = set(_PROMPT) | set(_OUTPUTS)
    expected = [
        (v / 2.0 if v > 0 else v * 2.0) if t in seen else v
        for t, v in enumerate(_LOGITS)
    ]
    assert _penalised(repetition_penalty=2.0) == pytest.approx(expected)


def test_frequency_penalty_subtracts_count_over_outputs():
    expected = [v - 0.5 * _OUTPUTS.count(t) for t, v in enumerate(_LOGITS)]
    assert _penalised(frequency_penalty=0.5) == pytest.approx(expected)


def test_presence_penalty_subtracts_once_if_in_outputs():
    expected = [v - 0.7 * (t in _OUTPUTS) for t, v in enumerate(_LOGITS)]
    assert _penalised(presence_penalty=0.7) == pytest.approx(expected)


def test_no_penalty_leaves_logits_alone():
    assert _penalised() == pytest.approx(_LOGITS)


def test_penalty_changes_the_greedy_choice():
    opts = dict(seed=0, temperature=0.0, presence_penalty=0.5)
    logits = torch.tensor([[3.0, 2.9, 0.0]])
    plain = Row(SamplingOptions(seed=0, temperature=0.0), [2, 0], 1)
    assert sample(logits.clone(), [plain])[0] == [0]
    assert sample(logits.clone(), [Row(SamplingOptions(**opts), [2, 0], 1)])[0] == [1]


@pytest.mark.parametrize("num_outputs,allowed", [(0, False), (1, False), (2, True)])
def test_banned_ids_masked_until_min_tokens(num_outputs, allowed):
    opts = SamplingOptions(seed=0, temperature=0.0, min_tokens=2, banned_ids=[4, 1])
    row = Row(opts, [0, 0] + [3] * num_outputs, 2)
    logits = torch.tensor([[0.0, 4.0, 1.0, 2.0, 5.0]])
    tokens, _ = sample(logits, [row])
    assert tokens == ([4] if allowed else [3])
    assert math.isinf(logits[0, 4]) != allowed


def test_banned_ids_never_sampled_randomly():
    logits = _probs(0.2, 0.5, 0.3)
    tokens = _draw(logits, 500, min_tokens=1, banned_ids=[1])
    assert set(tokens) == {0, 2}


def test_logprobs_at_chosen_first_then_rank_then_top_k():
    torch.manual_seed(3)
    lp = torch.randn(20).log_softmax(-1)
    order = lp.argsort(descending=True).tolist()
    chosen = order[3]
    out = logprobs_at(lp, chosen, 3)
    assert out.token_ids == [chosen] + order[:3]
    assert out.logprobs == pytest.approx(lp[out.token_ids].tolist())
    assert out.rank == 4
    only = logprobs_at(lp, order[0], 0)
    assert only.token_ids == [order[0]] and only.rank == 1


def test_sample_returns_logprobs_only_for_rows_that_ask():
    torch.manual_seed(4)
    logits = torch.randn(2, 30)
    rows = [
        Row(SamplingOptions(seed=0, temperature=0.0, logprobs=2)),
        Row(SamplingOptions(seed=1, temperature=0.0)),
    ]
    tokens, logprobs = sample(logits.clone(), rows)
    lp = logits[0].log_softmax(-1)
    top2 = lp.topk(2).indices.tolist()
    assert logprobs[0].token_ids == [tokens[0]] + top2
    assert logprobs[0].logprobs == pytest.approx(lp[logprobs[0].token_ids].tolist())
    assert logprobs[0].rank == 1
    assert logprobs[1] is None


def test_logit_bias_and_allowed_ids_act_per_row_before_sampling():
    torch.manual_seed(3)
    logits = torch.randn(3, 30)
    rows = [
        Row(SamplingOptions(seed=0, temperature=0.0)),
        Row(
            SamplingOptions(seed=0, temperature=0.0, bias_ids=[7], bias_values=[100.0])
        ),
        Row(SamplingOptions(seed=0, temperature=0.0, allowed_ids=[4, 9])),
    ]
    tokens, _ = sample(logits.clone(), rows)
    assert tokens[0] == int(logits[0].argmax())
    assert tokens[1] == 7  # +100 beats any N(0, 1) logit
    assert tokens[2] == (4 if logits[2, 4] > logits[2, 9] else 9)
    # A negative bias removes the argmax; random rows sample only allowed ids.
    best = int(logits[0].argmax())
    row = Row(
        SamplingOptions(seed=0, temperature=0.0, bias_ids=[best], bias_values=[-100.0])
    )
    assert sample(logits[:1].clone(), [row])[0][0] != best
    assert set(_draw(logits[0], 300, allowed_ids=[1, 2, 3])) == {1, 2, 3}


def test_logprob_ids_replace_top_k_and_stay_raw():
    torch.manual_seed(4)
    logits = torch.randn(1, 30)
    row = Row(
        SamplingOptions(
            seed=0, temperature=0.0, logprobs=2, logprob_ids=[5, 6], allowed_ids=[6]
        )
    )
    tokens, (lp,) = sample(logits.clone(), [row])
    raw = torch.log_softmax(logits[0], -1)
    assert tokens == [6] and lp.token_ids == [6, 5, 6]
    # The logprobs are the model's, before the mask: finite for token 5 too.
    assert lp.logprobs == pytest.approx([float(raw[6]), float(raw[5]), float(raw[6])])
