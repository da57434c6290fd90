from vllm.messages import (
    ExecuteModelRequest,
    NewRequest,
    RunningRequest,
    SamplingOptions,
    decode_request,
    encode,
)
from vllm.worker.request_state import RequestStates


def _new(
    req_id: str, tokens: list[int], blocks: list[int], n: int, computed: int = 0
) -> NewRequest:
    return NewRequest(
        req_id=req_id,
        token_ids=tokens,
        num_prompt_tokens=len(tokens),
        block_ids=blocks,
        num_computed_tokens=computed,
        num_scheduled_tokens=n,
        sampling=SamplingOptions(seed=len(req_id), top_k=3),
    )


def _msg(new=(), running=(), finished=()) -> ExecuteModelRequest:
    # Round-trip through the codec, as a worker would receive it.
    return decode_request(
        encode(ExecuteModelRequest(list(new), list(running), list(finished)))
    )


def test_new_request_is_stored_in_full():
    states = RequestStates()
    scheduled = states.apply(_msg(new=[_new("a", [5, 6, 7], [3, 9], 2)]))
    [(state, n)] = scheduled
    assert n == 2
    assert states.states == {"a": state}
    assert state.token_ids == [5, 6, 7]
    assert state.num_prompt_tokens == 3
    assert state.block_ids == [3, 9]
    assert state.sampling == SamplingOptions(seed=1, top_k=3)
    assert state.num_computed_tokens == 0


def test_running_delta_appends_blocks_to_the_table():
    states = RequestStates()
    states.apply(_msg(new=[_new("a", [1, 2, 3, 4], [0], 4)]))
    [(state, n)] = states.apply(_msg(running=[RunningRequest("a", [], 1)]))
    assert (state.block_ids, n) == ([0], 1)
    [(state, n)] = states.apply(_msg(running=[RunningRequest("a", [7, 2], 5)]))
    assert (state.block_ids, n) == ([0, 7, 2], 5)
    assert state.token_ids == [1, 2, 3, 4]


def test_state_does_not_alias_the_message():
    states = RequestStates()
    msg = _msg(new=[_new("a", [1, 2], [4], 2)])
    [(state, _)] = states.apply(msg)
    state.token_ids.append(99)
    state.block_ids.append(8)
    assert msg.new_requests[0].token_ids == [1, 2]
    assert msg.new_requests[0].block_ids == [4]


def test_finished_ids_evicted_before_new_requests_are_added():
    # A preempted request comes back in the same step that evicts its old copy:
    # eviction must happen first or the fresh copy would be dropped.
    states = RequestStates()
    states.apply(_msg(new=[_new("a", [1, 2, 3], [0, 1], 3)]))
    states.states["a"].token_ids.append(42)
    msg = _msg(new=[_new("a", [1, 2, 3, 42], [5], 4)], finished=["a"])
    [(state, n)] = states.apply(msg)
    assert states.states["a"] is state
    assert state.block_ids == [5]  # replaced, not appended to [0, 1]
    assert state.token_ids == [1, 2, 3, 42]
    assert n == 4


def test_finished_ids_are_dropped_and_unknown_ids_ignored():
    states = RequestStates()
    states.apply(_msg(new=[_new("a", [1], [0], 1), _new("b", [2], [1], 1)]))
    assert states.apply(_msg(finished=["a", "never-seen"])) == []
    assert set(states.states) == {"b"}


def test_new_request_then_running_delta_in_the_same_step():
    states = RequestStates()
    states.apply(_msg(new=[_new("a", [1, 2], [0], 2)]))
    msg = _msg(
        new=[_new("b", [3, 4, 5], [1], 3)], running=[RunningRequest("a", [2], 1)]
    )
    scheduled = states.apply(msg)
    assert [(s.req_id, n) for s, n in scheduled] == [("b", 3), ("a", 1)]
    assert states.states["a"].block_ids == [0, 2]


def test_scheduled_order_follows_the_message():
    states = RequestStates()
    states.apply(
        _msg(new=[_new(r, [1], [i], 1) for i, r in enumerate(["x", "y", "z"])])
    )
    msg = _msg(
        new=[_new("q", [1], [10], 1), _new("p", [1], [11], 1)],
        running=[
            RunningRequest("z", [], 1),
            RunningRequest("x", [], 1),
            RunningRequest("y", [], 1),
        ],
        finished=[],
    )
    scheduled = states.apply(msg)
    # New requests first in message order, then the running ones in theirs.
    assert [s.req_id for s, _ in scheduled] == ["q", "p", "z", "x", "y"]


def test_new_request_with_cached_prefix_starts_past_it():
    # A prefix-cache hit: the first two blocks (8 tokens) already hold KV, so
    # the worker computes from position 8 and keeps the whole block table.
    states = RequestStates()
    tokens = list(range(10, 21))
    [(state, n)] = states.apply(_msg(new=[_new("a", tokens, [4, 6, 9], 3, 8)]))
    assert (state.num_computed_tokens, n) == (8, 3)
    assert state.block_ids == [4, 6, 9]
    assert state.token_ids == tokens
