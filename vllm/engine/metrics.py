"""Prometheus metrics of a served engine, with vLLM's metric names.

Fed by ``AsyncLLMEngine``'s engine thread (prometheus_client metrics are
thread-safe); the server exposes ``registry`` at ``/metrics``. Times are taken
when a step returns, so the time to first token includes queueing and prefill.
"""

import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from vllm.engine.llm_engine import LLMEngine
from vllm.outputs import RequestOutput
from vllm.sampling_params import SamplingParams

# Seconds; wide because a CPU prefill of a long prompt can take many seconds.
_TTFT_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
)  # fmt: skip
_ITL_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
_E2E_BUCKETS = (
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0, 600.0,
    1200.0,
)  # fmt: skip


@dataclass
class _Timing:
    arrival: float  # time.monotonic() when submitted
    n: int  # completions the request asked for
    last: float | None = None  # when its latest token arrived
    num_tokens: int = 0  # output tokens seen so far, over its n completions


class EngineMetrics:
    def __init__(self, model_name: str, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        labels = ["model_name"]

        def make(kind, name, doc, extra=(), **kwargs):
            metric = kind(
                name, doc, [*labels, *extra], registry=self.registry, **kwargs
            )
            return metric if extra else metric.labels(model_name)

        self.model_name = model_name
        self.running = make(Gauge, "vllm:num_requests_running", "Sequences running.")
        self.waiting = make(
            Gauge, "vllm:num_requests_waiting", "Sequences waiting to be scheduled."
        )
        self.kv_usage = make(
            Gauge,
            "vllm:kv_cache_usage_perc",
            "Fraction of KV-cache blocks in use (1 = all).",
        )
        self.prompt_tokens = make(
            Counter, "vllm:prompt_tokens", "Prompt tokens of requests that started."
        )
        self.generation_tokens = make(
            Counter, "vllm:generation_tokens", "Output tokens generated."
        )
        self._success = make(
            Counter,
            "vllm:request_success",
            "Finished completions by finish reason (stop, length, abort).",
            extra=["finished_reason"],
        )
        self.ttft = make(
            Histogram,
            "vllm:time_to_first_token_seconds",
            "Time from submission to the first output token.",
            buckets=_TTFT_BUCKETS,
        )
        self.itl = make(
            Histogram,
            "vllm:inter_token_latency_seconds",
            "Time between consecutive output tokens of a request.",
            buckets=_ITL_BUCKETS,
        )
        self.e2e = make(
            Histogram,
            "vllm:e2e_request_latency_seconds",
            "Time from submission to the last output token.",
            buckets=_E2E_BUCKETS,
        )
        self._timings: dict[str, _Timing] = {}

    def finished(self, reason: str) -> Counter:
        return self._success.labels(self.model_name, reason)

    # -- StatLogger hooks (engine thread) ----------------------------------------

    def added(self, request_id: str, params: SamplingParams, arrival: float) -> None:
        self._timings[request_id] = _Timing(arrival, params.n)

    def stepped(self, engine: LLMEngine, outputs: list[RequestOutput]) -> None:
        now = time.monotonic()
        for out in outputs:
            timing = self._timings.get(out.request_id)
            if timing is None:
                continue
            num_tokens = sum(len(c.token_ids) for c in out.outputs)
            if num_tokens > timing.num_tokens:
                if timing.last is None:
                    self.ttft.observe(now - timing.arrival)
                    self.prompt_tokens.inc(len(out.prompt_token_ids))
                else:
                    self.itl.observe(now - timing.last)
                self.generation_tokens.inc(num_tokens - timing.num_tokens)
                timing.num_tokens, timing.last = num_tokens, now
            if out.finished:
                del self._timings[out.request_id]
                self.e2e.observe(now - timing.arrival)
                for completion in out.outputs:
                    self.finished(completion.finish_reason or "abort").inc()
        self.update_gauges(engine)

    def aborted(self, engine: LLMEngine, request_ids: list[str]) -> None:
        for request_id in request_ids:
            timing = self._timings.pop(request_id, None)
            if timing is not None:
                self.finished("abort").inc(timing.n)
        self.update_gauges(engine)

    def update_gauges(self, engine: LLMEngine) -> None:
        scheduler = engine.scheduler
        blocks = scheduler.block_manager
        self.running.set(len(scheduler.running))
        self.waiting.set(len(scheduler.waiting))
        self.kv_usage.set(1.0 - blocks.num_free_blocks / max(blocks.num_blocks, 1))
