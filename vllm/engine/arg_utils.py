"""EngineArgs: the user-facing knobs (CLI flags and ``LLM(...)`` keywords), turned
into validated frozen configs once."""

import argparse
import dataclasses
from dataclasses import dataclass

import torch

from vllm import envs
from vllm.config import (
    EXECUTOR_BACKENDS,
    LOAD_FORMATS,
    CacheConfig,
    LoRAConfig,
    ModelConfig,
    ParallelConfig,
    SchedulerConfig,
    VllmConfig,
    derive_max_model_len,
    resolve_dtype,
)
from vllm.field_checks import check_bool, check_float, check_int, check_str
from vllm.transformers_utils.model_resolver import (
    DEFAULT_MODEL,
    load_hf_config,
    resolve_model,
)


@dataclass
class EngineArgs:
    model: str = DEFAULT_MODEL
    tokenizer: str | None = None
    dtype: str = "auto"
    seed: int = 0
    max_model_len: int | None = None
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    kv_cache_space: float = 4.0
    num_gpu_blocks_override: int | None = None
    enable_prefix_caching: bool = False
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str | None = None
    load_format: str = "auto"
    # Accepted for vLLM compatibility and ignored: there is no graph capture on
    # CPU, so every run is eager.
    enforce_eager: bool = False
    max_logprobs: int = 20
    enable_lora: bool = False
    max_loras: int = 1
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None
    async_scheduling: bool = False

    def __post_init__(self) -> None:
        """Types are checked as soon as the arguments exist, before any model is
        resolved or process started; the configs built from them check ranges."""
        check_str("model", self.model)
        check_str("tokenizer", self.tokenizer, optional=True)
        if not isinstance(self.dtype, torch.dtype):
            check_str("dtype", self.dtype)
        for name in (
            "seed",
            "block_size",
            "max_num_seqs",
            "tensor_parallel_size",
            "pipeline_parallel_size",
        ):
            check_int(name, getattr(self, name))
        check_int("max_logprobs", self.max_logprobs)
        # None picks a default, so 0 must not slip through as "unset".
        for name in ("max_model_len", "max_num_batched_tokens"):
            check_int(name, getattr(self, name), low=1, optional=True)
        check_int(
            "num_gpu_blocks_override", self.num_gpu_blocks_override, optional=True
        )
        check_float("kv_cache_space", self.kv_cache_space)
        check_str(
            "distributed_executor_backend",
            self.distributed_executor_backend,
            optional=True,
        )
        check_str("load_format", self.load_format)
        for name in (
            "enable_prefix_caching",
            "enforce_eager",
            "enable_lora",
            "async_scheduling",
        ):
            check_bool(name, getattr(self, name))
        check_int("max_loras", self.max_loras)
        check_int("max_lora_rank", self.max_lora_rank)
        check_int("max_cpu_loras", self.max_cpu_loras, optional=True)

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        d = EngineArgs()
        add = parser.add_argument
        add("--model", type=str, default=d.model, help="HF folder, .gguf, or id")
        add("--tokenizer", type=str, default=None, help="defaults to --model")
        add(
            "--dtype",
            choices=["auto", "float32", "bfloat16", "float16"],
            default="auto",
        )
        add("--seed", type=int, default=d.seed)
        add("--max-model-len", type=int, default=None)
        add("--block-size", type=int, default=d.block_size)
        add("--max-num-seqs", type=int, default=d.max_num_seqs)
        add("--max-num-batched-tokens", type=int, default=None)
        add(
            "--kv-cache-space",
            type=float,
            default=d.kv_cache_space,
            help="GiB of KV cache per worker (CPU)",
        )
        add("--num-gpu-blocks-override", type=int, default=None)
        add(
            "--enable-prefix-caching",
            action=argparse.BooleanOptionalAction,
            default=d.enable_prefix_caching,
            help="reuse the KV cache of shared prompt prefixes",
        )
        add("--tensor-parallel-size", "-tp", type=int, default=1)
        add(
            "--pipeline-parallel-size",
            "-pp",
            type=int,
            default=1,
            help="stages the layers are split into (needs VLLM_USE_SPMD_WORKER=1)",
        )
        add("--distributed-executor-backend", choices=EXECUTOR_BACKENDS, default=None)
        add("--load-format", choices=LOAD_FORMATS, default=d.load_format)
        add(
            "--enforce-eager",
            action="store_true",
            help="accepted for compatibility; execution is always eager here",
        )
        add(
            "--max-logprobs",
            type=int,
            default=d.max_logprobs,
            help="most logprobs/prompt_logprobs a request may ask for; -1: no cap "
            "below the vocabulary size",
        )
        add("--enable-lora", action="store_true", help="serve LoRA adapters")
        add("--max-loras", type=int, default=d.max_loras, help="adapters per step")
        add("--max-lora-rank", type=int, default=d.max_lora_rank)
        add(
            "--max-cpu-loras",
            type=int,
            default=None,
            help="adapters each worker keeps loaded (default: --max-loras)",
        )
        add(
            "--async-scheduling",
            action=argparse.BooleanOptionalAction,
            default=False,
            help="schedule the next step while the workers compute this one",
        )
        return parser

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> "EngineArgs":
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: getattr(args, n) for n in names if hasattr(args, n)})

    def create_engine_config(self) -> VllmConfig:
        path = resolve_model(self.model)
        hf_config = load_hf_config(path)
        max_len = self.max_model_len or derive_max_model_len(hf_config)
        dtype, weight_dtype = resolve_dtype(self.dtype, hf_config)
        model_config = ModelConfig(
            model=self.model,
            model_path=path,
            tokenizer=resolve_model(self.tokenizer) if self.tokenizer else path,
            hf_config=hf_config,
            dtype=dtype,
            weight_dtype=None if weight_dtype == dtype else weight_dtype,
            seed=self.seed,
            max_model_len=max_len,
            load_format=self.load_format,
            use_custom_kernels=envs.VLLM_USE_CUSTOM_KERNELS,
            decode_layer_loop=envs.VLLM_DECODE_LAYER_LOOP,
            max_logprobs=self.max_logprobs,
        )
        return VllmConfig(
            model_config=model_config,
            cache_config=CacheConfig(
                block_size=self.block_size,
                kv_cache_space_gib=self.kv_cache_space,
                num_gpu_blocks_override=self.num_gpu_blocks_override,
                enable_prefix_caching=self.enable_prefix_caching,
            ),
            parallel_config=self._parallel_config(),
            scheduler_config=SchedulerConfig(
                max_num_seqs=self.max_num_seqs,
                max_num_batched_tokens=self.max_num_batched_tokens or 2048,
                async_scheduling=self.async_scheduling,
            ),
            lora_config=self._lora_config(),
        )

    def _lora_config(self) -> LoRAConfig | None:
        if not self.enable_lora:
            return None
        return LoRAConfig(self.max_loras, self.max_lora_rank, self.max_cpu_loras)

    def _parallel_config(self) -> ParallelConfig:
        spmd = envs.VLLM_USE_SPMD_WORKER
        backend = self.distributed_executor_backend
        if backend is None:
            if spmd:
                backend = "ray"
            else:
                world = self.tensor_parallel_size * self.pipeline_parallel_size
                backend = "uni" if world == 1 else "mp"
        return ParallelConfig(
            tensor_parallel_size=self.tensor_parallel_size,
            pipeline_parallel_size=self.pipeline_parallel_size,
            distributed_executor_backend=backend,
            use_spmd_worker=spmd,
            use_compiled_dag=envs.VLLM_USE_RAY_COMPILED_DAG,
            ray_address=envs.VLLM_RAY_ADDRESS,
            ray_placement_strategy=envs.VLLM_RAY_PLACEMENT_STRATEGY,
            num_threads_per_worker=envs.VLLM_CPU_NUM_THREADS,
            spmd_step_notifier=envs.VLLM_SPMD_STEP_NOTIFIER,
            spmd_worker_niceness=envs.VLLM_SPMD_WORKER_NICENESS,
            mq_max_chunk_bytes=int(envs.VLLM_MQ_MAX_CHUNK_BYTES_MB * (1 << 20)),
            mq_spin_us=envs.VLLM_MQ_SPIN_US,
            spmd_graph_idle_teardown_s=envs.VLLM_RAY_CGRAPH_IDLE_TEARDOWN_S,
        )
