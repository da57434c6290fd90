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


_TOKEN_BUCKETS = (
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000,
    100000,
)  # fmt: skip
_N_BUCKETS = (1, 2, 5, 10, 20)
_ITERATION_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
# Metrics vLLM hides since a version, served with --show-hidden-metrics-for-version.
HIDDEN = ("vllm:time_per_output_token_seconds",)


@dataclass
class _Timing:
    arrival: float  # time.monotonic() when submitted
    n: int  # completions the request asked for
    max_tokens: int | None
    last: float | None = None  # when its latest token arrived
    first: float | None = None  # when its first token arrived
    num_tokens: int = 0  # output tokens seen so far, over its n completions


class EngineMetrics:
    def __init__(
        self,
        model_name: str,
        registry: CollectorRegistry | None = None,
        show_hidden: bool = False,
    ):
        self.registry = registry or CollectorRegistry()
        labels = ["model_name", "engine"]  # vLLM's: one engine, "0"

        def make(kind, name, doc, extra=(), **kwargs):
            metric = kind(
                name, doc, [*labels, *extra], registry=self.registry, **kwargs
            )
            return metric if extra else metric.labels(model_name, "0")

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
        self.queue_time = make(
            Histogram,
            "vllm:request_queue_time_seconds",
            "Time from submission to first being scheduled.",
            buckets=_E2E_BUCKETS,
        )
        self.prefill_time = make(
            Histogram,
            "vllm:request_prefill_time_seconds",
            "Time from first being scheduled to the first output token.",
            buckets=_E2E_BUCKETS,
        )
        self.decode_time = make(
            Histogram,
            "vllm:request_decode_time_seconds",
            "Time from the first output token to the last.",
            buckets=_E2E_BUCKETS,
        )
        self.inference_time = make(
            Histogram,
            "vllm:request_inference_time_seconds",
            "Time from first being scheduled to the last output token.",
            buckets=_E2E_BUCKETS,
        )
        self.request_prompt_tokens = make(
            Histogram,
            "vllm:request_prompt_tokens",
            "Prompt tokens of each finished request.",
            buckets=_TOKEN_BUCKETS,
        )
        self.request_generation_tokens = make(
            Histogram,
            "vllm:request_generation_tokens",
            "Output tokens of each finished request (over its n completions).",
            buckets=_TOKEN_BUCKETS,
        )
        self.params_n = make(
            Histogram,
            "vllm:request_params_n",
            "The n of each finished request.",
            buckets=_N_BUCKETS,
        )
        self.params_max_tokens = make(
            Histogram,
            "vllm:request_params_max_tokens",
            "The max_tokens of each finished request.",
            buckets=_TOKEN_BUCKETS,
        )
        self.iteration_tokens = make(
            Histogram,
            "vllm:iteration_tokens_total",
            "Tokens per engine step: prompts that produced their first token, "
            "plus every output token.",
            buckets=_ITERATION_BUCKETS,
        )
        self.prefix_queries = make(
            Counter,
            "vllm:prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache.",
        )
        self.prefix_hits = make(
            Counter,
            "vllm:prefix_cache_hits",
            "Prompt tokens found in the prefix cache.",
        )
        self.preemptions = make(
            Counter, "vllm:num_preemptions", "Requests preempted (and recomputed)."
        )
        # Deprecated in vLLM; only with --show-hidden-metrics-for-version.
        self.tpot = self.gpu_usage = self.gpu_queries = self.gpu_hits = None
        if show_hidden:
            self.gpu_usage = make(
                Gauge, "vllm:gpu_cache_usage_perc", "Deprecated: kv_cache_usage_perc."
            )
            self.gpu_queries = make(
                Counter,
                "vllm:gpu_prefix_cache_queries",
                "Deprecated: prefix_cache_queries.",
            )
            self.gpu_hits = make(
                Counter, "vllm:gpu_prefix_cache_hits", "Deprecated: prefix_cache_hits."
            )
            self.tpot = make(
                Histogram,
                "vllm:time_per_output_token_seconds",
                "Time between consecutive output tokens (deprecated: "
                "vllm:inter_token_latency_seconds).",
                buckets=_ITL_BUCKETS,
            )
        self._timings: dict[str, _Timing] = {}
        self._cache_seen = (0, 0)
        self._preemptions_seen = 0

    def set_cache_config(self, info: dict[str, str]) -> None:
        """vllm:cache_config_info: the KV cache's configuration as labels."""
        gauge = Gauge(
            "vllm:cache_config_info",
            "The KV cache's configuration (labels); the value is 1.",
            sorted(info),
            registry=self.registry,
        )
        gauge.labels(**info).set(1)

    def finished(self, reason: str) -> Counter:
        return self._success.labels(self.model_name, "0", reason)

    # -- StatLogger hooks (engine thread) ----------------------------------------

    def added(self, request_id: str, params: SamplingParams, arrival: float) -> None:
        self._timings[request_id] = _Timing(arrival, params.n, params.max_tokens)

    def stepped(self, engine: LLMEngine, outputs: list[RequestOutput]) -> None:
        now = time.monotonic()
        step_tokens = 0
        for out in outputs:
            timing = self._timings.get(out.request_id)
            if timing is None:
                continue
            num_tokens = sum(len(c.token_ids) for c in out.outputs)
            if num_tokens > timing.num_tokens:
                if timing.last is None:
                    self.ttft.observe(now - timing.arrival)
                    self.prompt_tokens.inc(len(out.prompt_token_ids))
                    step_tokens += len(out.prompt_token_ids)
                    timing.first = now
                else:
                    self.itl.observe(now - timing.last)
                    if self.tpot is not None:
                        self.tpot.observe(now - timing.last)
                self.generation_tokens.inc(num_tokens - timing.num_tokens)
                step_tokens += num_tokens - timing.num_tokens
                timing.num_tokens, timing.last = num_tokens, now
            if out.finished:
                del self._timings[out.request_id]
                self._request_done(out, timing, now)
        if step_tokens:
            self.iteration_tokens.observe(step_tokens)
        self.update_gauges(engine)

    def _request_done(self, out: RequestOutput, timing: _Timing, now: float) -> None:
        self.e2e.observe(now - timing.arrival)
        for completion in out.outputs:
            self.finished(completion.finish_reason or "abort").inc()
        self.request_prompt_tokens.observe(len(out.prompt_token_ids))
        self.request_generation_tokens.observe(timing.num_tokens)
        self.params_n.observe(timing.n)
        if timing.max_tokens is not None:
            self.params_max_tokens.observe(timing.max_tokens)
        scheduled = out.first_scheduled_time
        if scheduled is not None:
            self.queue_time.observe(max(scheduled - timing.arrival, 0.0))
            self.inference_time.observe(max(now - scheduled, 0.0))
            if timing.first is not None:
                self.prefill_time.observe(max(timing.first - scheduled, 0.0))
        if timing.first is not None:
            self.decode_time.observe(now - timing.first)

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
        stats = scheduler.prefix_cache_stats
        queries, hits = self._cache_seen
        for counter, delta in (
            (self.prefix_queries, stats.queries - queries),
            (self.prefix_hits, stats.hits - hits),
            (self.gpu_queries, stats.queries - queries),
            (self.gpu_hits, stats.hits - hits),
        ):
            if counter is not None:
                counter.inc(delta)
        if self.gpu_usage is not None:
            self.gpu_usage.set(1.0 - blocks.num_free_blocks / max(blocks.num_blocks, 1))
        self._cache_seen = (stats.queries, stats.hits)
        self.preemptions.inc(scheduler.num_preemptions - self._preemptions_seen)
        self._preemptions_seen = scheduler.num_preemptions
