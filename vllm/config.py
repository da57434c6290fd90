"""Engine configuration: frozen dataclasses, each validated once when built.

Values discovered at run time (the number of KV blocks that fit, say) are returned by
the component that finds them and never written back here.
"""

import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from vllm.cpu_info import has_native_bf16
from vllm.field_checks import SEED_MAX, SEED_MIN, check_int

_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "half": torch.float16,
}
# Formats the weight iterators read, plus "dummy" (random weights, no checkpoint).
CHECKPOINT_FORMATS = ("auto", "safetensors", "gguf")
LOAD_FORMATS = (*CHECKPOINT_FORMATS, "dummy")
EXECUTOR_BACKENDS = ("uni", "mp", "ray")
# Ray's placement-group strategies, by Ray's names.
RAY_PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def resolve_dtype(
    dtype: str | torch.dtype,
    hf_config: Any,
    flags: frozenset[str] | None = None,  # CPU flags; None reads /proc/cpuinfo
) -> tuple[torch.dtype, torch.dtype]:
    """(compute dtype, weight dtype) for --dtype on this machine.

    'auto' keeps the checkpoint's precision. On GPU it is the checkpoint's dtype.
    On CPU, a 16-bit checkpoint runs in bfloat16 where the CPU multiplies bf16
    natively (avx512_bf16 or amx_bf16: torch's bf16 matmul is about 2.3x fp32
    there), and everything else in float32, the exact choice (bf16 without
    native support would only be slower). 'float16' on CPU stores the weight
    matrices in fp16 and computes in fp32: x86 CPUs convert fp16 (F16C) but do
    not multiply it faster, so halving the weight bytes is the gain, and fp32
    arithmetic keeps activations and the KV cache at full precision."""
    if isinstance(dtype, torch.dtype):
        return dtype, dtype
    if dtype not in ("auto", *_DTYPES):
        raise ValueError(
            f"dtype must be one of auto, {', '.join(sorted(_DTYPES))}; got {dtype!r}"
        )
    on_gpu = torch.cuda.is_available()
    if dtype == "auto":
        stored = getattr(hf_config, "dtype", None) or getattr(
            hf_config, "torch_dtype", None
        )
        stored = _DTYPES.get(stored) if isinstance(stored, str) else stored
        stored = stored if isinstance(stored, torch.dtype) else torch.float32
        if on_gpu:
            return stored, stored
        native_bf16 = has_native_bf16(flags)
        half = stored in (torch.bfloat16, torch.float16)
        found = torch.bfloat16 if half and native_bf16 else torch.float32
        return found, found
    found = _DTYPES[dtype]
    if found == torch.float16 and not on_gpu:
        return torch.float32, torch.float16
    return found, found


@dataclass(frozen=True)
class ModelConfig:
    model: str  # what the user named: a path, a .gguf file or a known model id
    model_path: str  # the local HF-format folder it resolved to
    tokenizer: str  # local folder holding the tokenizer files
    hf_config: Any  # transformers.PretrainedConfig of the checkpoint
    dtype: torch.dtype  # activations, KV cache and arithmetic
    seed: int
    max_model_len: int
    load_format: str = "auto"
    # Run the compiled vllm._C kernels where they apply (VLLM_USE_CUSTOM_KERNELS).
    use_custom_kernels: bool = True
    # Decode-only steps run the layers in one compiled call where it applies
    # (VLLM_DECODE_LAYER_LOOP; model_executor/layers/decode_loop.py).
    decode_layer_loop: bool = True
    # Most logprobs a request may ask for (logprobs and prompt_logprobs); -1
    # allows up to the vocabulary size. vLLM's default, the OpenAI API's limit.
    max_logprobs: int = 20
    # Storage of the weight matrices (linear layers, embedding, LM head) when it
    # differs from dtype: fp16 weights with fp32 arithmetic on CPU. None: dtype.
    weight_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        check_int("max_logprobs", self.max_logprobs, low=-1)
        check_int("seed", self.seed, SEED_MIN, SEED_MAX)
        if self.load_format not in LOAD_FORMATS:
            raise ValueError(
                f"load_format must be one of {LOAD_FORMATS}; got {self.load_format!r}"
            )
        if not os.path.isdir(self.model_path):
            raise ValueError(f"model_path {self.model_path!r} is not a directory")
        limit = derive_max_model_len(self.hf_config)
        if self.max_model_len < 1 or self.max_model_len > limit:
            raise ValueError(
                f"max_model_len must be in [1, {limit}] for this model; "
                f"got {self.max_model_len}"
            )

    @property
    def vocab_size(self) -> int:
        return self.hf_config.vocab_size

    @property
    def num_layers(self) -> int:
        return self.hf_config.num_hidden_layers

    @property
    def num_attention_heads(self) -> int:
        return self.hf_config.num_attention_heads

    @property
    def num_kv_heads(self) -> int:
        c = self.hf_config
        return getattr(c, "num_key_value_heads", None) or c.num_attention_heads

    @property
    def head_size(self) -> int:
        c = self.hf_config
        return getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads


def derive_max_model_len(hf_config: Any) -> int:
    """The longest context the model supports here. Attention is always full, so a
    sliding-window model (Mistral-style) is capped at its window, where full and
    windowed attention agree."""
    limit = int(getattr(hf_config, "max_position_embeddings", 0) or 2048)
    window = getattr(hf_config, "sliding_window", None)
    if window and getattr(hf_config, "use_sliding_window", True):
        limit = min(limit, int(window))
    return limit


@dataclass(frozen=True)
class CacheConfig:
    block_size: int = 16
    kv_cache_space_gib: float = 4.0  # GiB of KV cache per worker (CPU)
    # Fraction of blocks kept free when admitting a new request, so running
    # requests can grow a little before preemption kicks in.
    watermark: float = 0.01
    # Fixes the number of KV blocks instead of sizing them from kv_cache_space_gib
    # (tests use it to force preemption).
    num_gpu_blocks_override: int | None = None
    # Reuse the KV of full blocks whose token prefix an earlier request already
    # computed. Off by default, as in the vLLM this project follows (V0 engine).
    enable_prefix_caching: bool = False

    def __post_init__(self) -> None:
        if self.block_size not in (1, 2, 4, 8, 16, 32, 64, 128):
            raise ValueError(
                f"block_size must be a power of two up to 128; got {self.block_size}"
            )
        if not 0 < self.kv_cache_space_gib < math.inf:  # NaN fails too
            raise ValueError(
                "kv_cache_space must be a finite number > 0 (GiB); got "
                f"{self.kv_cache_space_gib}"
            )
        if not 0.0 <= self.watermark < 1.0:
            raise ValueError(f"watermark must be in [0, 1); got {self.watermark}")
        if (
            self.num_gpu_blocks_override is not None
            and self.num_gpu_blocks_override < 1
        ):
            raise ValueError(
                "num_gpu_blocks_override must be >= 1 or None; got "
                f"{self.num_gpu_blocks_override}"
            )


@dataclass(frozen=True)
class ParallelConfig:
    tensor_parallel_size: int = 1
    # Stages the layers are split into; ranks are stage-major (rank = stage *
    # tensor_parallel_size + TP rank), so a stage's TP ranks are neighbours.
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str = "uni"
    # Environment flags (see vllm/envs.py), read once by EngineArgs so every
    # component, in every process, sees the same choice.
    use_spmd_worker: bool = False
    use_compiled_dag: bool = False
    ray_address: str = ""
    # Ray placement-group strategy for the worker actors (RAY_PLACEMENT_STRATEGIES).
    ray_placement_strategy: str = "PACK"
    # torch threads per worker; 0 splits the worker's machine evenly between
    # the ranks that compute at once (see threads_per_rank).
    num_threads_per_worker: int = 0
    spmd_step_notifier: bool = True
    spmd_worker_niceness: int = 0
    # SPMD over our shared-memory rings (VLLM_MQ_*): slot size in bytes, and how
    # long a waiting reader spins before it sleeps in the kernel.
    mq_max_chunk_bytes: int = 4 << 20
    mq_spin_us: float = 50.0
    # Idle seconds before the SPMD compiled graph is torn down; 0: never.
    spmd_graph_idle_teardown_s: float = 1.0

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def output_rank(self) -> int:
        """The rank that samples and answers each step: the last stage's first."""
        return (self.pipeline_parallel_size - 1) * self.tensor_parallel_size

    def request_groups(self, async_scheduling: bool) -> int:
        """Request groups the scheduler keeps (one per pipeline stage when the
        stages overlap, which comes with async scheduling; else 1, and the
        stages take turns on each step)."""
        return self.pipeline_parallel_size if async_scheduling else 1

    def threads_per_rank(self, async_scheduling: bool, cpu_count: int) -> int:
        """torch threads per rank: the setting, or this machine's cores split
        between the ranks that compute at once (every rank when the stages
        overlap; one stage's TP ranks when they take turns, a waiting stage
        sleeping in its receive)."""
        busy = self.tensor_parallel_size * self.request_groups(async_scheduling)
        return self.num_threads_per_worker or max(1, cpu_count // busy)

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1:
            raise ValueError(
                f"tensor_parallel_size must be >= 1; got {self.tensor_parallel_size}"
            )
        if self.pipeline_parallel_size < 1:
            raise ValueError(
                "pipeline_parallel_size must be >= 1; got "
                f"{self.pipeline_parallel_size}"
            )
        if self.num_threads_per_worker < 0:
            raise ValueError(
                "VLLM_CPU_NUM_THREADS must be >= 0 (0 = automatic); got "
                f"{self.num_threads_per_worker}"
            )
        if not self.spmd_graph_idle_teardown_s >= 0:  # NaN fails too
            raise ValueError(
                "VLLM_RAY_CGRAPH_IDLE_TEARDOWN_S must be >= 0 (0 = never); got "
                f"{self.spmd_graph_idle_teardown_s}"
            )
        if self.distributed_executor_backend not in EXECUTOR_BACKENDS:
            raise ValueError(
                "distributed_executor_backend must be one of "
                f"{EXECUTOR_BACKENDS}; got {self.distributed_executor_backend!r}"
            )
        self._check_pipeline()
        if self.distributed_executor_backend == "uni" and self.world_size > 1:
            raise ValueError(
                "distributed_executor_backend 'uni' runs one worker; "
                f"tensor_parallel_size {self.world_size} needs 'mp' or 'ray'"
            )
        if self.use_compiled_dag and not self.use_spmd_worker:
            raise ValueError(
                "VLLM_USE_RAY_COMPILED_DAG=1 needs VLLM_USE_SPMD_WORKER=1 as well "
                "(and --distributed-executor-backend ray)"
            )
        if self.use_spmd_worker and self.distributed_executor_backend == "uni":
            raise ValueError(
                "VLLM_USE_SPMD_WORKER=1 runs every rank in its own process: set "
                "--distributed-executor-backend mp or ray (got 'uni'), or unset "
                "VLLM_USE_SPMD_WORKER"
            )
        if self.use_compiled_dag and self.distributed_executor_backend != "ray":
            raise ValueError(
                "VLLM_USE_RAY_COMPILED_DAG=1 needs --distributed-executor-backend "
                f"ray (got {self.distributed_executor_backend!r})"
            )
        if self.mq_max_chunk_bytes < 1:
            raise ValueError(
                "VLLM_MQ_MAX_CHUNK_BYTES_MB must be > 0; got "
                f"{self.mq_max_chunk_bytes / (1 << 20)}"
            )
        if self.ray_placement_strategy not in RAY_PLACEMENT_STRATEGIES:
            raise ValueError(
                "VLLM_RAY_PLACEMENT_STRATEGY must be one of "
                f"{RAY_PLACEMENT_STRATEGIES}; got {self.ray_placement_strategy!r}"
            )
        if self.mq_spin_us < 0:
            raise ValueError(f"VLLM_MQ_SPIN_US must be >= 0; got {self.mq_spin_us}")

    def _check_pipeline(self) -> None:
        """Stages pass hidden states rank to rank, which only SPMD ranks do: the
        legacy driver broadcasts one stage's inputs, and 'uni' runs one worker."""
        if self.pipeline_parallel_size == 1 or self.use_spmd_worker:
            return
        raise ValueError(
            f"pipeline_parallel_size {self.pipeline_parallel_size} is not supported "
            f"by the {self.distributed_executor_backend!r} executor (legacy "
            "driver): set VLLM_USE_SPMD_WORKER=1 with --distributed-executor-backend "
            "mp (or ray; VLLM_USE_RAY_COMPILED_DAG=1 for the compiled graph)"
        )


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    # Schedule step N+1 before step N's output is read (--async-scheduling):
    # the engine's CPU work overlaps the workers' forward pass.
    async_scheduling: bool = False

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1; got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(
                "max_num_batched_tokens must be >= 1; "
                f"got {self.max_num_batched_tokens}"
            )


@dataclass(frozen=True)
class LoRAConfig:
    """Present only with --enable-lora: without it the model has no LoRA layers."""

    max_loras: int = 1  # distinct adapters in one step (and slots per layer)
    max_lora_rank: int = 16  # the largest rank an adapter may have
    max_cpu_loras: int | None = None  # adapters a worker keeps loaded; >= max_loras

    def __post_init__(self) -> None:
        if self.max_loras < 1:
            raise ValueError(f"max_loras must be >= 1; got {self.max_loras}")
        if self.max_lora_rank < 1:
            raise ValueError(f"max_lora_rank must be >= 1; got {self.max_lora_rank}")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras "
                f"({self.max_loras})"
            )

    @property
    def cpu_capacity(self) -> int:
        return self.max_cpu_loras or self.max_loras


@dataclass(frozen=True)
class VllmConfig:
    model_config: ModelConfig
    cache_config: CacheConfig = field(default_factory=CacheConfig)
    parallel_config: ParallelConfig = field(default_factory=ParallelConfig)
    scheduler_config: SchedulerConfig = field(default_factory=SchedulerConfig)
    lora_config: LoRAConfig | None = None  # None: LoRA off

    def __post_init__(self) -> None:
        """Refuses a TP or PP size the model cannot be split by, before any
        process starts."""
        self._check_pipeline()
        tp = self.parallel_config.tensor_parallel_size
        heads = self.model_config.num_attention_heads
        kv_heads = self.model_config.num_kv_heads
        if heads % tp:
            raise ValueError(
                f"tensor_parallel_size {tp} does not divide the model's "
                f"{heads} attention heads"
            )
        if kv_heads % tp and tp % kv_heads:
            raise ValueError(
                f"tensor_parallel_size {tp} and the model's {kv_heads} KV heads: "
                "one must divide the other"
            )

    def _check_pipeline(self) -> None:
        pp = self.parallel_config.pipeline_parallel_size
        if pp == 1:
            return
        layers = self.model_config.num_layers
        if pp > layers:
            raise ValueError(
                f"pipeline_parallel_size {pp} exceeds the model's {layers} layers "
                "(every stage needs at least one)"
            )
        if self.lora_config is not None:
            raise ValueError(
                "LoRA (enable_lora) does not support pipeline parallelism: use "
                f"tensor_parallel_size alone, or pipeline_parallel_size 1 (got {pp})"
            )
