"""The persistent batch mirrors the request states: rows added, compacted on
removal, grown past their first size, and the decode inputs gathered from it
equal the ones built from the Python lists."""

import random

import torch

from vllm.messages import SamplingOptions
from vllm.model_executor.layers.sampler import uniform_point
from vllm.model_executor.layers.sampling_tensors import SamplingTensors, uniform_points
from vllm.worker.input_batch import InputBatch
from vllm.worker.request_state import CachedRequestState

BS = 4


def _state(name: str, tokens: list[int], blocks: list[int], **opts):
    return CachedRequestState(
        req_id=name,
        token_ids=list(tokens),
        num_prompt_tokens=2,
        block_ids=list(blocks),
        sampling=SamplingOptions(seed=len(name), **opts),
        num_computed_tokens=len(tokens) - 1,
    )


def _check(batch: InputBatch) -> None:
    """Every row equals its request's lists."""
    assert sorted(batch.row_of.values()) == list(range(len(batch.states)))
    for row, s in enumerate(batch.states):
        assert batch.row_of[s.req_id] == row
        n = len(s.token_ids)
        assert batch.token_ids[row, :n].tolist() == s.token_ids
        assert int(batch.num_tokens[row]) == n
        assert int(batch.num_computed[row]) == s.num_computed_tokens
        assert batch.block_table[row, : len(s.block_ids)].tolist() == s.block_ids
        want = SamplingTensors.from_rows([s])
        got = batch.sampling_tensors(torch.tensor([row]))
        for name in want.__dataclass_fields__:
            assert torch.equal(getattr(got, name), getattr(want, name)), name


def test_rows_follow_adds_removals_and_growth():
    batch = InputBatch(max_rows=2, max_model_len=512, block_size=BS)
    states = [
        _state("a", [1, 2, 3], [7], temperature=0.5),
        _state("bb", [4, 5], [3], top_k=2, top_p=0.5),
        _state("ccc", list(range(300)), list(range(75)), repetition_penalty=1.5),
    ]
    for s in states:  # the third grows the rows and the token columns
        batch.add(s)
    _check(batch)
    batch.remove("a")  # the last row moves into row 0
    assert [s.req_id for s in batch.states] == ["ccc", "bb"]
    _check(batch)
    batch.append_blocks(batch.row_of["bb"], [9, 11])
    states[1].block_ids += [9, 11]
    rows = batch.rows([states[1]])
    batch.record_sampled(rows, [42])
    states[1].token_ids.append(42)
    _check(batch)
    batch.add(_state("bb", [8, 8, 8], [1]))  # resumed: replaces the old row
    assert len(batch.states) == 2
    _check(batch)


def test_decode_inputs_equal_the_list_built_ones():
    rng = random.Random(0)
    batch = InputBatch(max_rows=8, max_model_len=64, block_size=BS)
    states = []
    for i in range(6):
        n = rng.randrange(3, 30)
        blocks = rng.sample(range(100), -(-(n + 1) // BS))
        states.append(_state(f"r{i}", [rng.randrange(50) for _ in range(n)], blocks))
        batch.add(states[-1])
    batch.remove("r2")
    picked = [states[5], states[0], states[3]]
    ids, positions, slots, tables = batch.decode_inputs(batch.rows(picked))
    pos = [s.num_computed_tokens for s in picked]
    assert positions.tolist() == pos
    assert ids.tolist() == [s.token_ids[p] for s, p in zip(picked, pos)]
    assert slots.tolist() == [
        s.block_ids[p // BS] * BS + p % BS for s, p in zip(picked, pos)
    ]
    for s, p, table in zip(picked, pos, tables.tolist()):
        used = p // BS + 1
        assert table[:used] == s.block_ids[:used]


def test_uniform_points_are_the_scalar_ones_bit_for_bit():
    rng = random.Random(1)
    seeds = [rng.randrange(-(1 << 63), 1 << 63) for _ in range(2000)]
    seeds += [-(1 << 63), (1 << 63) - 1, 0, -1]
    index = [rng.randrange(1 << 20) for _ in seeds]
    got = uniform_points(torch.tensor(seeds), torch.tensor(index)).tolist()
    assert got == [uniform_point(s, i) for s, i in zip(seeds, index)]


def test_subnormals_flush_only_inside_the_forward_scope():
    from vllm.worker.model_runner import _flush_subnormals

    tiny = torch.tensor([1e-40], dtype=torch.float32)  # subnormal in fp32
    with _flush_subnormals():
        assert float(tiny * 1.0) == 0.0
    assert float(tiny * 1.0) != 0.0  # the caller's process is left as it was


def test_growth_under_inference_mode_leaves_plain_tensors():
    """A step's sampling may grow the batch under inference_mode; the legacy
    driver then applies the next delta outside it (an in-place update of an
    inference tensor there raises)."""
    batch = InputBatch(max_rows=1, max_model_len=1024, block_size=BS)
    with torch.inference_mode():
        batch.add(_state("a", list(range(300)), list(range(75))))  # wider, taller
        batch.add(_state("b", [1, 2], [0]))
    batch.remove("b")
    batch.add(_state("c", [3, 4, 5], [1]))  # into the grown tensors' free row
    batch.remove("a")
    assert not batch.token_ids.is_inference()
    _check(batch)
