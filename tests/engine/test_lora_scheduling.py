"""LoRA in the scheduler, without a model: at most max_loras adapters run at once
(others wait, no error), an adapter travels once per admission, and the prefix
cache never mixes adapters."""

from tests.engine.factories import make_request, make_scheduler, scheduled_counts, step
from vllm.messages import LoRASpec, encode


def _lora(lora_id: int) -> LoRASpec:
    return LoRASpec(lora_id, f"adapter-{lora_id}", f"/adapters/{lora_id}")


def _request(req_id: str, lora_id: int, prompt_len: int = 6, **kwargs):
    req = make_request(req_id, prompt_len, **kwargs)
    req.lora = _lora(lora_id) if lora_id else None
    return req


def test_at_most_max_loras_adapters_run_and_the_rest_wait():
    sched = make_scheduler(max_loras=2, max_num_batched_tokens=256)
    adapters = {"a": 1, "b": 2, "c": 3, "d": 1, "e": 0, "f": 2}
    reqs = {rid: _request(rid, lid, max_tokens=3) for rid, lid in adapters.items()}
    for req in reqs.values():
        sched.add_request(req)
    first = step(sched)
    # c (a third adapter) waits; requests behind it with running adapters go.
    assert set(scheduled_counts(first)) == {"a", "b", "d", "e", "f"}
    seen_c = None
    for i in range(20):
        out = step(sched)
        ids = {req.lora_int_id for req, _ in out.scheduled if req.lora}
        assert len(ids) <= 2
        if "c" in scheduled_counts(out) and seen_c is None:
            seen_c = i
        if not sched.has_unfinished_requests():
            break
    assert seen_c is not None and not sched.has_unfinished_requests()
    assert all(len(r.output_token_ids) == 3 for r in reqs.values())


def test_without_lora_limit_every_adapter_is_admitted():
    sched = make_scheduler(max_num_batched_tokens=256)
    for i in range(5):
        sched.add_request(_request(str(i), i + 1))
    assert len(step(sched).scheduled) == 5


def test_adapter_travels_with_the_full_request_only():
    sched = make_scheduler(max_loras=4)
    sched.add_request(_request("a", 7, max_tokens=10))
    sched.add_request(_request("b", 0, max_tokens=10))
    first = step(sched).request
    assert [n.lora for n in first.new_requests] == [_lora(7), None]
    decode = step(sched).request
    assert not decode.new_requests and len(decode.running) == 2
    # A decode step costs the same bytes with or without an adapter.
    a, b = decode.running
    assert len(encode(a)) == len(encode(b))


def test_preempted_request_is_resent_with_its_adapter():
    sched = make_scheduler(num_blocks=5, block_size=4, max_loras=2)
    sched.add_request(_request("a", 1, prompt_len=8, max_tokens=8))
    sched.add_request(_request("b", 2, prompt_len=8, max_tokens=8))
    step(sched)
    resent = []
    for _ in range(20):
        out = step(sched)
        resent += [n for n in out.request.new_requests if n.req_id == "b"]
        if not sched.has_unfinished_requests():
            break
    assert sched.num_preemptions > 0
    assert resent and all(n.lora == _lora(2) for n in resent)


def test_prefix_cache_is_keyed_by_adapter():
    sched = make_scheduler(enable_caching=True, max_loras=4)
    prompt = list(range(100, 113))  # 3 full blocks of 4
    first = _request("first", 1, prompt=prompt, max_tokens=1)
    sched.add_request(first)
    step(sched)
    other = _request("other", 2, prompt=prompt, max_tokens=1)
    base = _request("base", 0, prompt=prompt, max_tokens=1)
    same = _request("same", 1, prompt=prompt, max_tokens=1)
    for req in (other, base, same):
        sched.add_request(req)
    counts = scheduled_counts(step(sched))
    assert counts["other"] == 13 and counts["base"] == 13
    assert counts["same"] == 1  # 12 tokens from first's cached blocks
