"""Prefix caching without a model: block keys, sharing, reference counts, LRU
eviction, and the scheduler's use of cached prefixes (admission, preemption,
abort, n > 1, watermark, prompt logprobs, hit counting)."""

import random

import pytest

from tests.engine.factories import make_request, make_scheduler, scheduled_counts, step
from vllm.engine.block_manager import BlockManager
from vllm.engine.request import RequestStatus
from vllm.messages import SamplerOutput
from vllm.worker.request_state import RequestStates

BS = 4


def _bm(num_blocks: int = 16, watermark: float = 0.0) -> BlockManager:
    return BlockManager(num_blocks, BS, watermark, enable_caching=True)


def _compute(bm: BlockManager, req, num_tokens: int) -> None:
    """What a scheduled step does to a request: blocks, computed tokens, and the
    registration that follows the step."""
    bm.allocate(req, num_tokens)
    req.num_computed_tokens = num_tokens
    bm.cache_full_blocks(req)


def _admit(bm: BlockManager, req) -> list[int]:
    """Admits req on its cached prefix and computes the rest; -> the hit."""
    cached, _ = bm.lookup(req)
    bm.allocate(req, req.num_tokens, cached)
    req.num_computed_tokens = req.num_tokens
    bm.cache_full_blocks(req)
    return cached


PROMPT = list(range(100, 114))  # 14 tokens: 3 full blocks and 2 tokens


# --- block keys -----------------------------------------------------------------


def test_computed_full_blocks_are_found_by_a_later_request():
    bm = _bm()
    a = make_request("a", 0, prompt=PROMPT)
    _compute(bm, a, len(PROMPT))
    assert bm.num_cached_blocks == 3  # the partial fourth block is not cached
    b = make_request("b", 0, prompt=PROMPT + [7, 7])
    cached, missed = bm.lookup(b)
    assert cached == a.block_ids[:3]
    assert missed is None


def test_blocks_are_not_found_before_they_are_computed():
    bm = _bm()
    a = make_request("a", 0, prompt=PROMPT)
    bm.allocate(a, len(PROMPT))  # scheduled, not yet computed
    assert bm.lookup(make_request("b", 0, prompt=PROMPT)) == (
        [],
        (-1, (100, 101, 102, 103)),
    )
    a.num_computed_tokens = 6  # a chunk: one block is full of computed tokens
    bm.cache_full_blocks(a)
    cached, _ = bm.lookup(make_request("b", 0, prompt=PROMPT))
    assert cached == a.block_ids[:1]


def test_the_last_token_is_never_served_from_the_cache():
    bm = _bm()
    prompt = list(range(12))  # exactly three blocks
    a = make_request("a", 0, prompt=prompt)
    _compute(bm, a, 12)
    assert bm.num_cached_blocks == 3
    # The same prompt again: two blocks come from the cache, the third is
    # recomputed so the step that computes the last token samples.
    cached, missed = bm.lookup(make_request("b", 0, prompt=prompt))
    assert cached == a.block_ids[:2] and missed is None
    # A one-block prompt hits nothing.
    c = make_request("c", 0, prompt=prompt[:4])
    assert bm.lookup(c) == ([], None)


def test_a_block_is_identified_by_its_tokens_and_everything_before_it():
    bm = _bm()
    a = make_request("a", 0, prompt=[1, 2, 3, 4, 5, 6, 7, 8, 9])
    _compute(bm, a, 9)
    # Same second block, different first block: nothing matches.
    other_first = make_request("b", 0, prompt=[1, 2, 3, 0, 5, 6, 7, 8, 9])
    assert bm.lookup(other_first)[0] == []
    # Same first block, different second: only the first matches.
    other_second = make_request("c", 0, prompt=[1, 2, 3, 4, 5, 6, 0, 8, 9])
    cached, missed = bm.lookup(other_second)
    assert cached == a.block_ids[:1]
    assert missed == (a.prefix_ids[0], (5, 6, 0, 8))
    # The second block's tokens at the start of a prompt are another block.
    shifted = make_request("d", 0, prompt=[5, 6, 7, 8, 9])
    assert bm.lookup(shifted)[0] == []


def test_output_blocks_are_cached_as_the_sequence_grows():
    bm = _bm()
    a = make_request("a", 0, prompt=PROMPT[:6])
    _compute(bm, a, 6)
    for token in (50, 51, 52):  # three decode steps
        a.output_token_ids.append(token)
        _compute(bm, a, a.num_tokens - 1)  # the newest token is not computed yet
    assert a.num_computed_tokens == 8
    assert bm.num_cached_blocks == 2
    follow_up = make_request("b", 0, prompt=a.all_token_ids + [60, 61])
    assert bm.lookup(follow_up)[0] == a.block_ids[:2]


def test_a_duplicate_block_stays_private_and_the_chain_goes_on():
    # Two requests computed the same prompt side by side: the second one's
    # blocks are not registered again, but its later blocks still chain on.
    bm = _bm()
    a = make_request("a", 0, prompt=PROMPT[:8])
    b = make_request("b", 0, prompt=PROMPT[:8] + [9, 9, 9, 9, 1])
    _compute(bm, a, 8)
    _compute(bm, b, 13)
    assert b.prefix_ids[:2] == a.prefix_ids
    assert bm.num_cached_blocks == 3  # a's two, then b's third
    c = make_request("c", 0, prompt=b.prompt_token_ids + [5])
    assert bm.lookup(c)[0] == [*a.block_ids, b.block_ids[2]]
    bm.free(b)
    # b's duplicate blocks held nothing reusable: straight back to plain free.
    assert bm.num_free_blocks == 16 - 2
    assert bm.num_cached_blocks == 3


def test_caching_off_finds_and_registers_nothing():
    bm = BlockManager(16, BS, 0.0, enable_caching=False)
    a = make_request("a", 0, prompt=PROMPT)
    _compute(bm, a, len(PROMPT))
    assert bm.num_cached_blocks == 0 and a.prefix_ids == []
    assert bm.lookup(make_request("b", 0, prompt=PROMPT)) == ([], None)
    assert bm.next_key(a, 100) is None


# --- sharing, reference counts, eviction ---------------------------------------


def test_shared_blocks_are_reference_counted():
    bm = _bm(num_blocks=10)
    a = make_request("a", 0, prompt=PROMPT)
    _compute(bm, a, 14)  # 4 blocks
    b = make_request("b", 0, prompt=PROMPT[:12] + [1, 2, 3])
    assert _admit(bm, b) == a.block_ids[:3]
    assert b.block_ids[:3] == a.block_ids[:3]
    assert b.block_ids[3] != a.block_ids[3]
    assert [bm.ref_count(x) for x in b.block_ids] == [2, 2, 2, 1]
    assert bm.num_free_blocks == 10 - 5
    shared = b.block_ids[:3]
    bm.free(a)
    assert [bm.ref_count(x) for x in b.block_ids] == [1, 1, 1, 1]
    assert bm.num_free_blocks == 10 - 4  # a's private block only
    bm.free(b)
    assert bm.num_free_blocks == 10
    # Free, but still findable.
    assert bm.lookup(make_request("c", 0, prompt=PROMPT))[0] == shared


def test_plain_free_blocks_go_before_cached_ones():
    bm = _bm(num_blocks=6)
    a = make_request("a", 0, prompt=PROMPT[:9])
    _compute(bm, a, 9)  # 3 blocks, 2 cached
    cached = a.block_ids[:2]
    bm.free(a)
    b = make_request("b", 0, prompt=[0] * 12)
    bm.allocate(b, 12)  # 3 blocks: the 3 never-cached ones
    assert not set(b.block_ids) & set(cached)
    assert bm.lookup(make_request("c", 0, prompt=PROMPT))[0] == cached


def test_eviction_takes_least_recently_released_first():
    bm = _bm(num_blocks=6)
    reqs = {}
    for name, first in (("a", 10), ("b", 20), ("c", 30)):
        req = make_request(name, 0, prompt=list(range(first, first + 5)))
        _compute(bm, req, 5)  # 2 blocks, the first one cached
        reqs[name] = req
    for name in ("b", "a", "c"):  # released in this order
        bm.free(reqs[name])
    # Touch a: hitting a block and releasing it again makes it recent.
    again = make_request("a2", 0, prompt=reqs["a"].prompt_token_ids)
    _admit(bm, again)
    bm.free(again)
    assert bm.num_cached_blocks == 3
    d = make_request("d", 0, prompt=[0] * 16)
    bm.allocate(d, 16)  # 4 blocks: 3 plain ones are not enough, so 1 eviction
    assert bm.num_cached_blocks == 2
    hits = {
        n: bm.lookup(make_request(n, 0, prompt=r.prompt_token_ids))[0]
        for n, r in reqs.items()
    }
    assert hits["b"] == []  # released first, never touched again
    assert hits["a"] and hits["c"]
    bm.allocate(d, 20)
    hits = {
        n: bm.lookup(make_request(n, 0, prompt=r.prompt_token_ids))[0]
        for n, r in reqs.items()
    }
    assert hits["c"] == [] and hits["a"]  # c was released before a's touch


def test_a_request_releases_its_tail_first():
    bm = _bm(num_blocks=4)
    a = make_request("a", 0, prompt=list(range(17)))
    _compute(bm, a, 16)  # four cached blocks
    blocks = list(a.block_ids)
    bm.free(a)
    b = make_request("b", 0, prompt=[0] * 4)
    bm.allocate(b, 4)  # one eviction: a's last block, not its first
    assert b.block_ids == blocks[3:]
    cached, _ = bm.lookup(make_request("c", 0, prompt=list(range(17))))
    assert cached == blocks[:3]


def test_hit_blocks_are_not_evicted_to_make_room_for_their_own_request():
    bm = _bm(num_blocks=4)
    a = make_request("a", 0, prompt=list(range(9)))
    _compute(bm, a, 9)
    hit_blocks = a.block_ids[:2]
    bm.free(a)
    # Four blocks for b: the two hits plus two more; only the evictable hits
    # and the two plain blocks exist, so the count must be exact.
    b = make_request("b", 0, prompt=list(range(9)) + [1] * 7)
    cached, _ = bm.lookup(b)
    assert cached == hit_blocks
    assert bm.blocks_needed(b, 16, cached) == 4
    bm.allocate(b, 16, cached)
    assert b.block_ids[:2] == hit_blocks
    assert len(set(b.block_ids)) == 4 and bm.num_free_blocks == 0


def test_cached_but_free_blocks_count_as_free_cached_in_use_do_not():
    bm = _bm(num_blocks=10, watermark=0.2)  # 2 blocks of watermark
    a = make_request("a", 0, prompt=list(range(21)))
    _compute(bm, a, 21)  # 6 blocks, 5 cached, 4 free
    b = make_request("b", 0, prompt=list(range(20)) + [7] * 8)  # 7 blocks
    cached, _ = bm.lookup(b)
    assert len(cached) == 5
    # While a holds them, the hits cost nothing: 2 new blocks, 4 free.
    assert bm.blocks_needed(b, 28, cached) == 2
    assert bm.can_allocate(b, 28, cached)
    bm.free(a)
    # Released, the hits come out of the free pool: 7 of 10, watermark kept.
    assert bm.num_free_blocks == 10
    assert bm.blocks_needed(b, 28, cached) == 7
    assert bm.can_allocate(b, 28, cached)
    assert not bm.can_allocate(b, 36, cached)  # 9 would eat the watermark
    assert bm.can_append(b, 40, cached)  # growing may use all 10
    assert not bm.can_append(b, 41, cached)


# --- scheduler ------------------------------------------------------------------


def _sched(**kwargs):
    kwargs.setdefault("block_size", BS)
    return make_scheduler(enable_caching=True, **kwargs)


def test_admission_starts_at_the_cached_prefix():
    sched = _sched()
    sched.add_request(make_request("a", 0, prompt=PROMPT, max_tokens=2))
    step(sched)
    b = make_request("b", 0, prompt=PROMPT[:12] + [5, 6, 7], max_tokens=2)
    sched.add_request(b)
    out = step(sched)
    assert scheduled_counts(out)["b"] == 3  # 12 of 15 from the cache
    [new] = out.request.new_requests
    assert (new.req_id, new.num_computed_tokens, new.num_scheduled_tokens) == (
        "b",
        12,
        3,
    )
    assert new.block_ids == b.block_ids and len(new.block_ids) == 4
    assert sched.prefix_cache_stats.queries == 14 + 15
    assert sched.prefix_cache_stats.hits == 12


def test_n_completions_share_the_prompt_blocks():
    # Four requests with one prompt, as n=4 fans out: the first computes the
    # prompt; the others wait one step, then compute only its last tokens.
    sched = _sched()
    children = [make_request(f"c{i}", 0, prompt=PROMPT, max_tokens=4) for i in range(4)]
    for child in children:
        sched.add_request(child)
    first = step(sched)
    assert scheduled_counts(first) == {"c0": 14}
    second = step(sched)
    assert scheduled_counts(second) == {"c0": 1, "c1": 2, "c2": 2, "c3": 2}
    shared = children[0].block_ids[:3]
    for child in children[1:]:
        assert child.block_ids[:3] == shared
    assert [sched.block_manager.ref_count(b) for b in shared] == [4, 4, 4]
    # 4 shared blocks + 4 private tails (each child's last block).
    assert sched.block_manager.num_free_blocks == 64 - 3 - 4
    assert sched.prefix_cache_stats.hits == 3 * 12


def test_unrelated_requests_are_not_held_back_by_a_waiting_one():
    sched = _sched()
    for name in ("a", "b"):
        sched.add_request(make_request(name, 0, prompt=PROMPT))
    sched.add_request(make_request("x", 6))
    out = sched.schedule()
    assert scheduled_counts(out) == {"a": 14, "x": 6}
    assert [r.request_id for r in sched.waiting] == ["b"]


def test_prompt_logprobs_requests_compute_their_whole_prompt():
    sched = _sched()
    sched.add_request(make_request("a", 0, prompt=PROMPT, max_tokens=10))
    step(sched)
    b = make_request("b", 0, prompt=PROMPT, max_tokens=2, prompt_logprobs=1)
    sched.add_request(b)
    out = step(sched)
    assert scheduled_counts(out)["b"] == 14
    assert out.request.new_requests[0].num_computed_tokens == 0
    # Its computed blocks are still good for others.
    assert set(b.prefix_ids[:3]) == set(sched.requests["a"].prefix_ids[:3])


def test_preempted_request_frees_its_references_and_reuses_its_blocks():
    # 8 blocks of 4 tokens: a (12-token prompt) and b (10) cannot both grow by
    # 20 tokens, so b, the newer, is preempted.
    sched = _sched(num_blocks=8, max_num_batched_tokens=64)
    a = make_request("a", 0, prompt=list(range(100, 112)), max_tokens=20)
    b = make_request("b", 0, prompt=list(range(200, 210)), max_tokens=20)
    sched.add_request(a)
    sched.add_request(b)
    while not sched.num_preemptions:
        out = step(sched)
    assert "b" in out.request.finished_req_ids  # the workers drop their copy
    assert b.status == RequestStatus.WAITING and b.block_ids == []
    assert b.prefix_ids == [] and b.num_computed_tokens == 0
    bm = sched.block_manager
    assert all(bm.ref_count(x) == 1 for x in a.block_ids)
    assert len(a.block_ids) + bm.num_free_blocks == 8
    # b had computed 14 tokens (10 of prompt, 4 of output): its three full
    # blocks, the third holding outputs, stay cached while free.
    assert len(b.all_token_ids) == 15
    cached, _ = bm.lookup(b)
    assert len(cached) == 3
    a.max_tokens = len(a.output_token_ids) + 1  # a finishes next step
    step(sched)
    out = step(sched)
    [new] = out.request.new_requests
    assert new.req_id == "b"
    assert new.block_ids[: len(cached)] == cached
    assert new.num_computed_tokens == len(cached) * BS
    assert new.num_computed_tokens + new.num_scheduled_tokens == len(new.token_ids)
    assert new.token_ids == b.all_token_ids[: len(new.token_ids)]


def test_abort_drops_only_the_aborted_requests_references():
    sched = _sched()
    for name in ("a", "b"):
        sched.add_request(make_request(name, 0, prompt=PROMPT, max_tokens=10))
    step(sched)
    step(sched)
    a, b = sched.requests["a"], sched.requests["b"]
    shared = a.block_ids[:3]
    assert b.block_ids[:3] == shared
    bm = sched.block_manager
    sched.finish_requests(["a"], RequestStatus.FINISHED_ABORTED)
    assert [bm.ref_count(x) for x in shared] == [1, 1, 1]
    assert b.block_ids[:3] == shared
    out = step(sched)
    assert out.request.finished_req_ids == ["a"]
    sched.finish_requests(["b"], RequestStatus.FINISHED_ABORTED)
    assert bm.num_free_blocks == bm.num_blocks
    assert all(bm.ref_count(x) == 0 for x in range(bm.num_blocks))


def test_admission_counts_released_hits_against_the_watermark():
    # 10 blocks, watermark 2. A finished request left 5 cached blocks; one
    # request runs on 3 blocks. A newcomer hits the 5 and needs 2 more: 7 free
    # blocks taken of 7 free leaves 0 < 2, so it must wait.
    sched = _sched(num_blocks=10, watermark=0.2, max_num_batched_tokens=64)
    prompt = list(range(100, 121))  # 21 tokens: 5 full blocks + 1
    sched.add_request(make_request("done", 0, prompt=prompt, max_tokens=1))
    step(sched)
    assert sched.block_manager.num_free_blocks == 10
    sched.add_request(make_request("run", 10, max_tokens=50))
    step(sched)
    sched.add_request(make_request("new", 0, prompt=prompt + [1] * 7))
    out = step(sched)
    assert "new" not in scheduled_counts(out)
    # With the running request gone, no watermark applies and it fits.
    sched.finish_requests(["run"], RequestStatus.FINISHED_ABORTED)
    out = step(sched)
    assert scheduled_counts(out) == {"new": 8}


def test_hit_rate_and_caching_off():
    for caching in (True, False):
        sched = make_scheduler(block_size=BS, enable_caching=caching)
        for i in range(3):
            sched.add_request(make_request(f"r{i}", 0, prompt=PROMPT, max_tokens=1))
        while sched.has_unfinished_requests():
            step(sched)
        stats = sched.prefix_cache_stats
        assert stats.queries == 3 * 14
        assert stats.hits == (2 * 12 if caching else 0)
        assert stats.hit_rate == pytest.approx(stats.hits / stats.queries)
        assert sched.block_manager.num_free_blocks == sched.block_manager.num_blocks


def test_drained_scheduler_logs_the_hit_rate(caplog):
    import logging

    sched = _sched()
    logger = logging.getLogger("vllm")
    logger.addHandler(caplog.handler)
    try:
        for i in range(2):
            sched.add_request(make_request(f"r{i}", 0, prompt=PROMPT, max_tokens=1))
        while sched.has_unfinished_requests():
            step(sched)
    finally:
        logger.removeHandler(caplog.handler)
    assert "Prefix cache hit rate: 42.9% (12 of 28 tokens" in caplog.text


# --- random workload against a fake KV cache ------------------------------------


def _token_at(req_id: str, position: int) -> int:
    return (sum(map(ord, req_id)) * 7919 + position * 31) % 97 + 3


class _FakeKV:
    """A worker whose 'KV cache' stores (position, token) per slot: a request
    must find its own tokens in every slot it attends to, however they got
    there (computed by itself or served from the cache)."""

    def __init__(self, num_blocks: int):
        self.slots = [None] * (num_blocks * BS)
        self.states = RequestStates()

    def step(self, out) -> SamplerOutput:
        ids, tokens = [], []
        for state, n in self.states.apply(out.request):
            start = state.num_computed_tokens
            for p in range(start):
                slot = state.block_ids[p // BS] * BS + p % BS
                assert self.slots[slot] == (p, state.token_ids[p]), state.req_id
            for p in range(start, start + n):
                slot = state.block_ids[p // BS] * BS + p % BS
                self.slots[slot] = (p, state.token_ids[p])
            state.num_computed_tokens = start + n
            if start + n == len(state.token_ids):
                token = _token_at(state.req_id, len(state.token_ids))
                state.token_ids.append(token)
                ids.append(state.req_id)
                tokens.append(token)
        return SamplerOutput(ids, tokens, [None] * len(ids))


@pytest.mark.parametrize("seed", range(4))
def test_random_workload_reads_only_its_own_tokens(seed):
    rng = random.Random(seed)
    num_blocks = 24
    sched = _sched(
        num_blocks=num_blocks, max_num_batched_tokens=20, max_num_seqs=5, watermark=0.05
    )
    worker = _FakeKV(num_blocks)
    prefixes = [
        [rng.randrange(3, 50) for _ in range(rng.randint(4, 14))] for _ in range(3)
    ]
    finished_tokens: list[list[int]] = []
    live, count = {}, 0
    for _ in range(400):
        if count < 40 and rng.random() < 0.5:
            if finished_tokens and rng.random() < 0.3:
                prompt = rng.choice(finished_tokens) + [rng.randrange(3, 50)]
            else:
                suffix = [rng.randrange(3, 50) for _ in range(rng.randint(0, 8))]
                prompt = rng.choice(prefixes) + suffix
            prompt = prompt[:40]
            opts = {"prompt_logprobs": 1} if rng.random() < 0.1 else {}
            req = make_request(
                f"r{count}", 0, prompt=prompt, max_tokens=rng.randint(1, 12), **opts
            )
            count += 1
            sched.add_request(req)
            live[req.request_id] = req
        if live and rng.random() < 0.05:
            victim = live.pop(rng.choice(sorted(live)))
            sched.finish_requests([victim.request_id], RequestStatus.FINISHED_ABORTED)
        out = sched.schedule()
        _check_references(sched)
        got = sched.update_from_output(out, worker.step(out))
        done = [r for r in got if len(r.output_token_ids) >= r.max_tokens]
        sched.finish_requests(
            [r.request_id for r in done], RequestStatus.FINISHED_LENGTH
        )
        for r in done:
            finished_tokens.append(r.all_token_ids)
            live.pop(r.request_id)
        if count >= 40 and not sched.has_unfinished_requests():
            break
    assert not sched.has_unfinished_requests()
    stats = sched.prefix_cache_stats
    assert stats.hits > 0 and sched.num_preemptions > 0
    bm = sched.block_manager
    assert bm.num_free_blocks == num_blocks
    assert all(bm.ref_count(b) == 0 for b in range(num_blocks))


def _check_references(sched) -> None:
    bm = sched.block_manager
    holders = [0] * bm.num_blocks
    for req in sched.requests.values():
        assert len(set(req.block_ids)) == len(req.block_ids)
        for b in req.block_ids:
            holders[b] += 1
    assert holders == [bm.ref_count(b) for b in range(bm.num_blocks)]
    assert bm.num_free_blocks == holders.count(0)
