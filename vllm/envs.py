"""Every environment variable the project reads, typed and documented in one place.

Values are read when accessed (``vllm.envs.VLLM_X``), not at import, so tests and
launchers may set them after importing ``vllm``. Those that pick behaviour (the
control plane, kernels on or off, thread counts) are read once, by
``EngineArgs.create_engine_config``, into the frozen config that every component
and every worker process receives; nothing reads them on a hot path.
"""

import os
from collections.abc import Callable
from typing import Any


def _flag(name: str, default: str = "0") -> Callable[[], bool]:
    return lambda: os.environ.get(name, default).strip().lower() in ("1", "true", "yes")


def _int(name: str, default: int) -> Callable[[], int]:
    return lambda: int(os.environ.get(name, str(default)))


def _float(name: str, default: float) -> Callable[[], float]:
    return lambda: float(os.environ.get(name, str(default)))


def _str(name: str, default: str) -> Callable[[], str]:
    return lambda: os.environ.get(name, default)


_VARIABLES: dict[str, tuple[Callable[[], Any], str]] = {
    "VLLM_TARGET_DEVICE": (
        _str("VLLM_TARGET_DEVICE", "cpu"),
        "Build only: which kernel sources setup.py compiles, 'cpu' or 'cuda'.",
    ),
    "VLLM_CACHE_ROOT": (
        _str(
            "VLLM_CACHE_ROOT",
            os.path.join(os.path.expanduser("~"), ".cache", "vllm"),
        ),
        "Where converted checkpoints (GGUF -> safetensors) are cached.",
    ),
    "VLLM_LOGGING_LEVEL": (
        _str("VLLM_LOGGING_LEVEL", "INFO"),
        "Log level of the 'vllm' logger.",
    ),
    "VLLM_CPU_NUM_THREADS": (
        _int("VLLM_CPU_NUM_THREADS", 0),
        "torch threads per worker; 0 splits the machine's cores evenly between the "
        "ranks that compute at once (one pipeline stage's tensor-parallel ranks; "
        "all ranks when stages overlap under --async-scheduling) so they do not "
        "oversubscribe the CPU. Read into "
        "ParallelConfig.num_threads_per_worker.",
    ),
    "VLLM_CPU_ISA_LEVEL": (
        _str("VLLM_CPU_ISA_LEVEL", "native"),
        "Mask the CPU's flags down to a lower level (avx2, avx512, avx512_bf16 or "
        "native; see vllm/cpu_info.py) so every path gated on a CPU feature can "
        "run on one machine. Read once per process by vllm.cpu_info.cpu_flags, "
        "which every dtype, threshold and kernel choice asks.",
    ),
    "VLLM_USE_CUSTOM_KERNELS": (
        _flag("VLLM_USE_CUSTOM_KERNELS", "1"),
        "Use the compiled vllm._C kernels when they are built; 0 forces the "
        "pure-torch paths (for comparisons). Read into "
        "ModelConfig.use_custom_kernels.",
    ),
    "VLLM_DECODE_LAYER_LOOP": (
        _flag("VLLM_DECODE_LAYER_LOOP", "1"),
        "Run a decode-only step's decoder layers in one compiled call "
        "(_C::decode_layers: the same kernels in the same order, without the "
        "Python between them) where it applies; 0 keeps the module loop (for "
        "comparisons). Read into ModelConfig.decode_layer_loop.",
    ),
    "VLLM_USE_SPMD_WORKER": (
        lambda: _flag("VLLM_USE_SPMD_WORKER")() or _flag("VLLM_USE_RAY_SPMD_WORKER")(),
        "Run every rank, rank 0 included, in its own process (no driver worker in "
        "the engine process): spawned processes with --distributed-executor-backend "
        "mp, Ray actors with ray (the default backend then). Steps travel through "
        "our shared-memory rings (VLLM_MQ_*), or a Ray Compiled Graph with "
        "VLLM_USE_RAY_COMPILED_DAG. VLLM_USE_RAY_SPMD_WORKER is accepted as an "
        "alias.",
    ),
    "VLLM_USE_RAY_COMPILED_DAG": (
        _flag("VLLM_USE_RAY_COMPILED_DAG"),
        "With VLLM_USE_SPMD_WORKER and the ray backend: send each step through a "
        "Ray Compiled Graph over Ray's shared-memory channels instead of our rings.",
    ),
    "VLLM_MQ_MAX_CHUNK_BYTES_MB": (
        _float("VLLM_MQ_MAX_CHUNK_BYTES_MB", 4.0),
        "Slot size (MiB) of the SPMD shared-memory rings; a larger message goes "
        "through a local socket instead. 4 holds a step that brings a full batch "
        "of 256 new requests with prompts of ~2k tokens (msgpack, ~3 bytes a "
        "token) and any decode step; pages are only touched as far as messages "
        "reach. Read into ParallelConfig.mq_max_chunk_bytes.",
    ),
    "VLLM_MQ_SPIN_US": (
        _float("VLLM_MQ_SPIN_US", 50.0),
        "Microseconds a reader of an SPMD ring spins before it sleeps on a futex "
        "until the writer wakes it. A futex wake-up measured ~30-60 us here, so "
        "spinning about that long costs at most what sleeping would, and idle "
        "ranks sleep in the kernel. Read into ParallelConfig.mq_spin_us.",
    ),
    "VLLM_RAY_CGRAPH_SUBMIT_TIMEOUT": (
        _float("VLLM_RAY_CGRAPH_SUBMIT_TIMEOUT", 300.0),
        "Seconds the engine waits to write a step into the compiled graph. Long, "
        "because a slow prefill step must not be taken for a hang.",
    ),
    "VLLM_RAY_CGRAPH_GET_TIMEOUT": (
        _float("VLLM_RAY_CGRAPH_GET_TIMEOUT", 300.0),
        "Seconds the engine waits for a step's result before it declares a hang.",
    ),
    "VLLM_RAY_CGRAPH_IDLE_TEARDOWN_S": (
        _float("VLLM_RAY_CGRAPH_IDLE_TEARDOWN_S", 1.0),
        "Seconds the compiled graph may go unused before the engine tears it down; "
        "the next step compiles it again (a few hundred ms). Ray's graph readers "
        "poll their shared-memory channels and so keep a core per rank busy while "
        "the engine is idle; tearing the graph down makes idle mean idle. 0 keeps "
        "the graph for the engine's life. Read into "
        "ParallelConfig.spmd_graph_idle_teardown_s.",
    ),
    "VLLM_WORKER_LIVENESS_POLL_S": (
        _float("VLLM_WORKER_LIVENESS_POLL_S", 1.0),
        "While waiting for a step, how often the engine checks that every worker "
        "process is still alive, so a dead rank is reported instead of hanging.",
    ),
    "VLLM_SPMD_STEP_NOTIFIER": (
        _flag("VLLM_SPMD_STEP_NOTIFIER", "1"),
        "With the compiled graph, rank 0 pings the engine over a Unix socket when a "
        "step is done, so the engine sleeps in the kernel instead of spinning on the "
        "output channel (which would steal a core from the workers). Read into "
        "ParallelConfig.spmd_step_notifier.",
    ),
    "VLLM_SPMD_WORKER_NICENESS": (
        _int("VLLM_SPMD_WORKER_NICENESS", 0),
        "Niceness added to SPMD worker actors. Idle compiled-graph actors spin on "
        "their input channel; a positive value lets the engine process win the CPU "
        "while it schedules on a machine with no spare core. Read into "
        "ParallelConfig.spmd_worker_niceness.",
    ),
    "VLLM_RAY_ADDRESS": (
        _str("VLLM_RAY_ADDRESS", ""),
        "Address of a running Ray cluster to join; empty joins a local one if up, "
        "else starts one.",
    ),
    "VLLM_RAY_PLACEMENT_STRATEGY": (
        lambda: os.environ.get("VLLM_RAY_PLACEMENT_STRATEGY", "PACK").strip().upper(),
        "Ray placement-group strategy for the worker actors (one CPU bundle per "
        "rank): PACK (as few nodes as fit), SPREAD, STRICT_PACK (one node) or "
        "STRICT_SPREAD (one rank per node; the legacy driver's rank 0 counts as "
        "one on the engine's node). Case-insensitive. Read into "
        "ParallelConfig.ray_placement_strategy.",
    ),
}


def __getattr__(name: str) -> Any:
    if name in _VARIABLES:
        return _VARIABLES[name][0]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return list(_VARIABLES)
