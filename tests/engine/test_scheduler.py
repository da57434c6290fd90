import random
from collections import deque

import pytest

from tests.engine.factories import (
    make_request,
    make_scheduler,
    scheduled_counts,
    step,
)
from vllm.engine.request import RequestStatus
from vllm.messages import SamplerOutput, encode
from vllm.worker.request_state import RequestStates


def test_long_prompt_is_chunked_then_decodes_one_token_per_step():
    sched = make_scheduler(block_size=4, max_num_batched_tokens=8)
    req = make_request("a", 20, max_tokens=10)
    sched.add_request(req)
    counts, outputs, blocks = [], [], []
    for _ in range(5):
        out = step(sched)
        counts.append(scheduled_counts(out)["a"])
        outputs.append(len(req.output_token_ids))
        blocks.append(len(req.block_ids))
    assert counts == [8, 8, 4, 1, 1]
    # No token until the whole prompt is computed.
    assert outputs == [0, 0, 1, 2, 3]
    assert blocks == [2, 4, 5, 6, 6]
    assert req.num_computed_tokens == 22


def test_token_budget_is_shared_and_leftover_admits_chunks():
    sched = make_scheduler(max_num_batched_tokens=16)
    for rid in "abc":
        sched.add_request(make_request(rid, 10))
    assert scheduled_counts(step(sched)) == {"a": 10, "b": 6}
    assert scheduled_counts(step(sched)) == {"a": 1, "b": 4, "c": 10}
    assert scheduled_counts(step(sched)) == {"a": 1, "b": 1, "c": 1}


def test_max_num_seqs_caps_running_requests():
    sched = make_scheduler(max_num_seqs=2)
    for rid in "abcd":
        sched.add_request(make_request(rid, 4, max_tokens=3))
    seen = []
    while sched.has_unfinished_requests():
        out = step(sched)
        assert len(out.scheduled) <= 2
        assert len(sched.running) <= 2
        seen.append(set(scheduled_counts(out)))
    assert seen == [{"a", "b"}] * 3 + [{"c", "d"}] * 3


def test_new_request_joins_while_others_decode():
    sched = make_scheduler()
    sched.add_request(make_request("a", 4))
    step(sched)
    sched.add_request(make_request("b", 6))
    out = step(sched)
    assert scheduled_counts(out) == {"a": 1, "b": 6}
    assert [r.req_id for r in out.request.running] == ["a"]
    assert [r.req_id for r in out.request.new_requests] == ["b"]


def test_running_first_in_arrival_order_then_waiting_in_order():
    sched = make_scheduler(max_num_batched_tokens=64)
    for rid in "abc":
        sched.add_request(make_request(rid, 4))
    step(sched)
    for rid in "def":
        sched.add_request(make_request(rid, 3))
    out = step(sched)
    assert [r.request_id for r, _ in out.scheduled] == list("abcdef")
    assert [r.req_id for r in out.request.running] == list("abc")
    assert [r.req_id for r in out.request.new_requests] == list("def")


def test_watermark_only_guards_admissions_while_something_runs():
    # 2 of 10 blocks are the watermark.
    sched = make_scheduler(
        num_blocks=10, block_size=8, max_num_batched_tokens=128, watermark=0.2
    )
    sched.add_request(make_request("alone", 80, max_tokens=1))
    assert scheduled_counts(step(sched)) == {"alone": 80}  # all 10 blocks
    # a decodes within its 5 blocks for two steps, so 5 stay free.
    sched.add_request(make_request("a", 38))
    step(sched)
    big = make_request("big", 32)  # 4 blocks: would fit, but eats the watermark
    sched.add_request(big)
    assert scheduled_counts(step(sched)) == {"a": 1}
    assert sched.block_manager.num_free_blocks == 5
    sched.finish_requests([big.request_id], RequestStatus.FINISHED_ABORTED)
    sched.add_request(make_request("small", 24))  # 3 blocks leave the watermark
    assert scheduled_counts(step(sched)) == {"a": 1, "small": 24}


def test_preemption_evicts_newest_and_resends_it_in_full():
    sched = make_scheduler(num_blocks=4, block_size=4)
    reqs = {rid: make_request(rid, 4, max_tokens=100) for rid in "abc"}
    for req in reqs.values():
        sched.add_request(req)
    step(sched, token=11)  # one block each, one free; every prompt sampled
    late = make_request("late", 4)
    sched.add_request(late)

    # a takes the free block; b needs one too, so c (the newest) goes.
    out = step(sched, token=12)
    c = reqs["c"]
    assert scheduled_counts(out) == {"a": 1, "b": 1}
    assert out.request.finished_req_ids == ["c"]
    assert c.status == RequestStatus.WAITING
    assert c.block_ids == [] and c.num_computed_tokens == 0
    assert c.output_token_ids == [11]
    assert list(sched.waiting) == [c, late]  # ahead of the newer arrival
    assert sched.num_preemptions == 1
    assert sched.block_manager.num_free_blocks == 0

    sched.finish_requests(["a"], RequestStatus.FINISHED_STOPPED)
    out = step(sched)
    assert out.request.finished_req_ids == ["a"]
    assert scheduled_counts(out) == {"b": 1, "c": 5}
    [resent] = out.request.new_requests
    assert resent.req_id == "c"
    assert resent.token_ids == c.prompt_token_ids + [11]
    assert resent.num_prompt_tokens == 4
    assert resent.num_scheduled_tokens == 5
    assert resent.block_ids == c.block_ids and len(c.block_ids) == 2
    assert [r.req_id for r in out.request.running] == ["b"]


def test_newest_request_preempts_itself_rather_than_an_older_one():
    sched = make_scheduler(num_blocks=2, block_size=4)
    old, new = make_request("old", 3), make_request("new", 4)
    sched.add_request(old)
    sched.add_request(new)
    step(sched)
    out = step(sched)  # old fits its block; new needs a second block
    assert scheduled_counts(out) == {"old": 1}
    assert out.request.finished_req_ids == ["new"]
    assert sched.running == [old]
    assert list(sched.waiting) == [new]


def _all_finished_ids(sched, steps):
    ids = []
    for _ in range(steps):
        ids += sched.schedule().request.finished_req_ids
    return ids


def test_finished_and_aborted_ids_are_sent_once():
    sched = make_scheduler()
    a, b = make_request("a", 4), make_request("b", 4, max_tokens=2)
    sched.add_request(a)
    sched.add_request(b)
    step(sched)
    step(sched)  # b reaches max_tokens and is finished by the step helper
    assert b.status == RequestStatus.FINISHED_LENGTH
    sched.finish_requests([a.request_id], RequestStatus.FINISHED_ABORTED)
    sched.finish_requests([a.request_id], RequestStatus.FINISHED_ABORTED)  # no double
    assert a.block_ids == [] and b.block_ids == []
    assert sched.block_manager.num_free_blocks == sched.block_manager.num_blocks
    assert sorted(_all_finished_ids(sched, 3)) == ["a", "b"]
    assert not sched.has_unfinished_requests()


def test_preempted_then_aborted_request_is_evicted_once():
    sched = make_scheduler(num_blocks=2, block_size=4)
    old, new = make_request("old", 3), make_request("new", 4)
    sched.add_request(old)
    sched.add_request(new)
    step(sched)
    ids = sched.schedule().request.finished_req_ids  # preempts new
    sched.finish_requests([new.request_id], RequestStatus.FINISHED_ABORTED)
    ids += _all_finished_ids(sched, 2)
    assert ids == ["new"]
    assert new not in sched.waiting


def test_request_travels_in_full_once_then_as_block_deltas():
    sched = make_scheduler(block_size=4)
    req = make_request("a", 6, max_tokens=10)
    sched.add_request(req)
    out = step(sched)
    [new] = out.request.new_requests
    assert new.token_ids == req.prompt_token_ids
    assert len(new.block_ids) == 2 and new.num_scheduled_tokens == 6
    deltas = []
    for _ in range(5):
        out = step(sched)
        assert out.request.new_requests == []
        [running] = out.request.running
        assert running.num_scheduled_tokens == 1
        deltas.append(running.new_block_ids)
    # Context 7, 8 fit two blocks; 9 needs a third; 10, 11 fit it.
    assert deltas == [[], [], [req.block_ids[2]], [], []]
    assert len(req.block_ids) == 3


def test_decode_message_size_does_not_grow_with_context():
    sizes = {}
    for ctx in (100, 1000):
        sched = make_scheduler(
            num_blocks=1024, block_size=16, max_num_batched_tokens=8192
        )
        for i in range(8):
            sched.add_request(make_request(f"req-{i}", ctx))
        prefill = step(sched)
        decode = sched.schedule()
        assert set(scheduled_counts(decode).values()) == {1}
        sizes[ctx] = len(encode(decode.request)) / 8
        assert len(encode(prefill.request)) / 8 > ctx  # the prompt travelled
    assert abs(sizes[1000] - sizes[100]) <= 0.1 * sizes[100]


def _check_engine_invariants(sched, out, budget, max_seqs):
    bm = sched.block_manager
    assert sum(n for _, n in out.scheduled) <= budget
    assert all(n > 0 for _, n in out.scheduled)
    assert len(sched.running) <= max_seqs
    held = [b for r in sched.requests.values() for b in r.block_ids]
    assert len(held) == len(set(held))
    assert len(held) + bm.num_free_blocks == bm.num_blocks
    for req, _ in out.scheduled:  # computed counts already include the step
        needed = -(-req.num_computed_tokens // bm.block_size)
        assert len(req.block_ids) == needed


def _token_at(req_id: str, position: int) -> int:
    # Stands in for a seeded sampler: a pure function of request and position.
    return (int(req_id[1:]) * 7919 + position * 31) % 1000


def _worker_step(worker, out):
    """A fake worker built on RequestStates: checks that its copy of every
    scheduled request matches the engine's, then samples like a model runner."""
    for rid in out.request.finished_req_ids:
        assert rid in worker.states  # only evict what the worker holds
    ids, tokens = [], []
    for state, n in worker.apply(out.request):
        engine_req = next(r for r, _ in out.scheduled if r.request_id == state.req_id)
        assert state.block_ids == engine_req.block_ids
        # Under async scheduling the worker is ahead by the tokens in flight.
        known = engine_req.num_known_tokens
        assert state.token_ids[:known] == engine_req.all_token_ids
        assert len(state.token_ids) <= engine_req.num_tokens
        start = state.num_computed_tokens  # 0 for a fresh copy
        assert start == engine_req.num_computed_tokens - n
        state.num_computed_tokens = start + n
        if start + n == len(state.token_ids):
            # The token depends on the output index only, as a seeded sampler.
            token = _token_at(state.req_id, len(state.token_ids))
            state.token_ids.append(token)
            ids.append(state.req_id)
            tokens.append(token)
    return SamplerOutput(ids, tokens, [None] * len(ids))


def _stops(token: int) -> bool:
    return token % 11 == 0  # stands in for EOS or a stop string


@pytest.mark.parametrize(
    "num_groups, depth",
    [(1, 0), (1, 1), (1, 2), (2, 1), (2, 2), (3, 3)],
    ids=["sync", "async", "depth2", "pp2", "pp2-async", "pp3-async"],
)
def test_random_workload_keeps_worker_and_engine_in_sync(num_groups, depth):
    """The fake worker runs each step as it is sent, and the engine reads its
    output ``depth`` steps later, as StepQueue does (async scheduling, pipeline
    stages). With several steps in flight, a request can be preempted and run
    again before its discarded run's token arrives: that token is dropped."""
    preemptions = sum(_random_workload(seed, num_groups, depth) for seed in range(6))
    assert preemptions > 0  # the workload must exercise preemption


def _random_workload(seed: int, num_groups: int, depth: int) -> int:
    """Runs one random workload to the end, checking it; -> preemptions."""
    rng = random.Random(seed)
    budget, max_seqs = 24, 4
    sched = make_scheduler(
        num_blocks=16,
        block_size=4,
        max_num_batched_tokens=budget,
        max_num_seqs=max_seqs,
        watermark=0.1,
        num_groups=num_groups,
    )
    pending = [
        make_request(f"r{i}", rng.randint(1, 30), max_tokens=rng.randint(1, 20))
        for i in range(16)
    ]
    reqs = list(pending)
    worker = RequestStates()
    in_flight = deque()
    for _ in range(800):
        if not (pending or sched.has_unfinished_requests() or in_flight):
            break
        if pending and rng.random() < 0.4:
            sched.add_request(pending.pop(0))
        out = sched.schedule()
        _check_engine_invariants(sched, out, budget, max_seqs)
        in_flight.append((out, _worker_step(worker, out)))
        if len(in_flight) <= depth and sched.has_unfinished_requests():
            continue
        got = sched.update_from_output(*in_flight.popleft())
        done = [r for r in got if len(r.output_token_ids) >= r.max_tokens]
        stopped = [r for r in got if r not in done and _stops(r.output_token_ids[-1])]
        sched.finish_requests(
            [r.request_id for r in done], RequestStatus.FINISHED_LENGTH
        )
        sched.finish_requests(
            [r.request_id for r in stopped], RequestStatus.FINISHED_STOPPED
        )
    assert not pending and not sched.has_unfinished_requests()
    for req in reqs:
        prompt_len = len(req.prompt_token_ids)
        expected = []
        for i in range(req.max_tokens):
            expected.append(_token_at(req.request_id, prompt_len + i))
            if _stops(expected[-1]):
                break
        assert req.output_token_ids == expected
        assert req.num_pending == 0 or req.status.finished
    worker.apply(sched.schedule().request)  # flush the last finished ids
    assert worker.states == {}
    return sched.num_preemptions


def test_pipeline_groups_take_turns_with_disjoint_requests():
    """With 2 groups, a burst that one step could admit whole is split, and
    consecutive steps share no request, so a stage never needs the tokens of
    the step just before."""
    sched = make_scheduler(num_blocks=64, max_num_batched_tokens=64, num_groups=2)
    for i in range(6):
        sched.add_request(make_request(f"r{i}", 4, max_tokens=8))
    steps = [sched.schedule() for _ in range(6)]  # no output read: all in flight
    ids = [set(scheduled_counts(s)) for s in steps]
    assert ids[0] == {"r0", "r1", "r2"} and ids[1] == {"r3", "r4", "r5"}
    for earlier, later in zip(ids, ids[1:]):
        assert earlier.isdisjoint(later)
    assert ids[2] == ids[0] and ids[3] == ids[1]


def test_pipeline_group_with_nothing_to_do_passes_its_turn():
    sched = make_scheduler(num_blocks=64, num_groups=2)
    sched.add_request(make_request("a", 4, max_tokens=8))
    first = step(sched)
    assert scheduled_counts(first) == {"a": 4}
    # Group 1 is empty: group 0 goes again at once rather than an empty step.
    assert scheduled_counts(step(sched)) == {"a": 1}
    sched.add_request(make_request("b", 4, max_tokens=8))
    assert scheduled_counts(step(sched)) == {"b": 4}  # group 1's turn
    assert scheduled_counts(step(sched)) == {"a": 1}


def test_pipeline_groups_split_max_num_seqs():
    sched = make_scheduler(num_blocks=64, max_num_seqs=4, num_groups=2)
    for i in range(8):
        sched.add_request(make_request(f"r{i}", 2, max_tokens=8))
    assert len(sched.schedule().scheduled) == 2
    assert len(sched.schedule().scheduled) == 2
    assert len(sched.running) == 4 and len(sched.waiting) == 4
