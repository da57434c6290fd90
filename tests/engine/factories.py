"""Model-free builders for engine tests: requests, schedulers and fake worker
outputs, so scheduling can be stepped without a model or a tokenizer."""

from vllm.config import SchedulerConfig
from vllm.engine.block_manager import BlockManager
from vllm.engine.request import Request, RequestStatus
from vllm.engine.scheduler import Scheduler, SchedulerOutput
from vllm.messages import SamplerOutput, SamplingOptions


def make_request(
    req_id: str,
    prompt_len: int,
    max_tokens: int = 16,
    seed: int = 0,
    prompt: list[int] | None = None,
    **options,
) -> Request:
    """A request whose prompt is prompt_len distinct-ish token ids (or the given
    prompt, which overrides prompt_len); extra keyword arguments go to its
    SamplingOptions."""
    if prompt is None:
        # Offset by the id so two requests' prompts differ, which catches mix-ups.
        base = sum(map(ord, req_id))
        prompt = [(base + i) % 1000 + 3 for i in range(prompt_len)]
    return Request(
        request_id=req_id,
        prompt_token_ids=prompt,
        options=SamplingOptions(seed=seed, **options),
        max_tokens=max_tokens,
    )


def make_scheduler(
    num_blocks: int = 64,
    block_size: int = 4,
    max_num_batched_tokens: int = 64,
    max_num_seqs: int = 8,
    watermark: float = 0.0,
    enable_caching: bool = False,
    max_loras: int | None = None,
    num_groups: int = 1,
) -> Scheduler:
    config = SchedulerConfig(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
    )
    bm = BlockManager(num_blocks, block_size, watermark, enable_caching)
    return Scheduler(config, bm, max_loras, num_groups)


def fake_output(sched_out: SchedulerOutput, token: int = 7) -> SamplerOutput:
    """What a worker would return: one token for every scheduled request whose
    scheduled tokens reach the end of the tokens it knows (a partial prefill
    samples nothing). Must be built right after schedule(), before anything
    else changes the requests: the scheduler counts a sampling row's token as
    pending, one past the computed tokens."""
    req_ids = [
        req.request_id
        for req, _ in sched_out.scheduled
        if req.num_pending and req.num_computed_tokens == req.num_tokens - 1
    ]
    return SamplerOutput(
        req_ids=req_ids,
        sampled_token_ids=[token] * len(req_ids),
        logprobs=[None] * len(req_ids),
    )


def step(scheduler: Scheduler, token: int = 7) -> SchedulerOutput:
    """One engine step: schedule, fake the workers, record the result, and
    finish any request that reached its max_tokens (as the engine would)."""
    out = scheduler.schedule()
    got = scheduler.update_from_output(out, fake_output(out, token))
    done = [r for r in got if len(r.output_token_ids) >= r.max_tokens]
    scheduler.finish_requests(
        [r.request_id for r in done], RequestStatus.FINISHED_LENGTH
    )
    return out


def scheduled_counts(sched_out: SchedulerOutput) -> dict[str, int]:
    return {req.request_id: n for req, n in sched_out.scheduled}
