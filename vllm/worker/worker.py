"""One rank (a tensor-parallel rank of a pipeline stage): owns its stage's model
weights and KV cache.

Every method here is reachable through the executor's ``collective_rpc`` on every
backend; ``execute_model`` is the per-step entry point. The worker does not know
which control plane drives it.
"""

import os

import torch

from vllm.config import VllmConfig
from vllm.distributed.parallel_state import (
    PipelineGroup,
    TensorParallelGroup,
    destroy_distributed,
    init_distributed,
)
from vllm.messages import ExecuteModelRequest, LoRASpec, SamplerOutput
from vllm.worker.model_runner import ModelRunner
from vllm.worker.pending_tokens import PendingTokens


class Worker:
    def __init__(
        self,
        vllm_config: VllmConfig,
        rank: int = 0,
        distributed_init_method: str | None = None,
    ):
        self.config = vllm_config
        self.rank = rank
        self.distributed_init_method = distributed_init_method
        self.tp = TensorParallelGroup()
        self.pp = PipelineGroup()
        self.model_runner: ModelRunner | None = None
        self._pending_tokens: PendingTokens | None = None  # with stages only

    def init_device(self) -> None:
        pc = self.config.parallel_config
        # Stages that take turns get the cores of one stage each: on 2 cores
        # PP=2 made 1283 tokens/s that way, overlapping stages with 1 thread
        # each 1054 (benchmarks/README.md, issue 13).
        threads = pc.threads_per_rank(
            self.config.scheduler_config.async_scheduling, os.cpu_count() or 1
        )
        torch.set_num_threads(threads)
        if pc.world_size > 1:
            self.tp, self.pp = init_distributed(
                self.rank,
                self.distributed_init_method,
                pc.tensor_parallel_size,
                pc.pipeline_parallel_size,
            )
        self.model_runner = ModelRunner(self.config, self.tp, self.pp)
        if self.pp.size > 1:
            self._pending_tokens = PendingTokens(self.pp, self.model_runner.accept)

    def load_model(self) -> None:
        self.model_runner.load_model()

    def _num_local_kv_heads(self) -> int:
        mc = self.config.model_config
        return max(1, mc.num_kv_heads // self.tp.size)

    def determine_num_available_blocks(self) -> int:
        """How many KV blocks fit in this rank's KV-cache space (for its own
        stage's layers)."""
        cc, mc = self.config.cache_config, self.config.model_config
        if cc.num_gpu_blocks_override is not None:
            return cc.num_gpu_blocks_override
        elem = torch.tensor([], dtype=mc.dtype).element_size()
        per_block = (
            2
            * len(self.model_runner.layers)
            * cc.block_size
            * self._num_local_kv_heads()
            * mc.head_size
        ) * elem
        return max(1, int(cc.kv_cache_space_gib * (1 << 30)) // per_block)

    def initialize_cache(self, num_blocks: int) -> None:
        self.model_runner.initialize_cache(num_blocks, self._num_local_kv_heads())

    @torch.inference_mode()
    def execute_model(self, req: ExecuteModelRequest) -> SamplerOutput | None:
        """Every rank computes the step (each pipeline stage its layers); the
        output rank (the last stage's first) alone gathers the logits and
        samples, then shares the tokens, so every rank keeps the same request
        states. (Gathering the vocabulary-sized logits to every rank instead
        costs about twice as much on gloo: 10 ms against 4.4 + 0.8 ms at batch
        64, vocabulary 49152.) Without stages the tokens are broadcast at once;
        with stages they are received in the background (see pending_tokens),
        so an earlier stage goes on to the next step. Only the output rank's
        output is read; the others return None."""
        runner = self.model_runner
        if self.config.parallel_config.world_size == 1:
            return runner.execute_model(req)
        sampler = self.rank == self.pp.output_rank
        pending = self._pending_tokens
        if pending is not None:
            pending.settle_for(req)
        inp = runner.prepare_inputs(req)
        if inp is None:  # nothing scheduled: the delta only evicted
            return SamplerOutput([], [], []) if sampler else None
        logits = runner.forward(inp, gather_to_all=False)
        if sampler:
            out = runner.sample(inp, logits)
            tokens = torch.tensor(out.sampled_token_ids, dtype=torch.long)
            if pending is None:
                self.pp.share_tokens(tokens)
            else:
                pending.send(tokens)
            return out
        if pending is not None:
            pending.expect(inp)
            return None
        tokens = self.pp.share_tokens(
            torch.empty(len(inp.sample_states), dtype=torch.long)
        )
        runner.accept(inp, tokens.tolist())
        return None

    def steps_ahead(self) -> int:
        """The most steps this rank computed while an earlier step's tokens
        were still unrecorded: above 0 when pipeline stages overlapped; 0
        without stages."""
        pending = self._pending_tokens
        return 0 if pending is None else max(0, pending.max_in_flight - 1)

    # LoRA adapters: the engine makes these calls on every rank, in one order.

    def add_lora(self, spec: LoRASpec) -> bool:
        return self._lora().add(spec)

    def remove_lora(self, lora_id: int) -> bool:
        return self._lora().remove(lora_id)

    def pin_lora(self, spec: LoRASpec) -> bool:
        return self._lora().pin(spec)

    def list_loras(self) -> list[int]:
        return self._lora().loaded_ids()

    def _lora(self):
        manager = self.model_runner.lora_manager
        if manager is None:
            raise ValueError("LoRA is off: start the engine with enable_lora=True")
        return manager

    def check_health(self) -> None:
        """Answers once the worker can take a step; raises if it cannot."""
        if self.model_runner is None or self.model_runner.model is None:
            raise RuntimeError(f"worker rank {self.rank} has no model loaded")

    def get_pid(self) -> int:
        return os.getpid()

    def shutdown(self) -> None:
        self.model_runner = None
        destroy_distributed(self.config.parallel_config.world_size)
