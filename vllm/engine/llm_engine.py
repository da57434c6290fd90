"""The engine process: tokenizer, scheduler, block manager and detokenizer. It talks
to the workers only through the executor and the messages in ``vllm.messages``."""

import itertools
import random
from collections.abc import Iterable
from typing import Any

from vllm.config import VllmConfig
from vllm.engine.arg_utils import EngineArgs
from vllm.engine.block_manager import BlockManager
from vllm.engine.input_validation import InputValidator
from vllm.engine.output_processor import OutputProcessor, ParentRequest
from vllm.engine.request import Request, RequestStatus
from vllm.engine.scheduler import Scheduler, SchedulerOutput
from vllm.engine.step_queue import StepQueue
from vllm.executor import get_executor_class
from vllm.logger import init_logger
from vllm.lora.registry import LoRARegistry
from vllm.lora.request import LoRARequest
from vllm.messages import SamplerOutput
from vllm.outputs import RequestOutput
from vllm.sampling_params import SamplingParams
from vllm.transformers_utils.model_resolver import load_tokenizer

logger = init_logger(__name__)

PromptType = str | dict[str, Any]


class LLMEngine:
    def __init__(self, vllm_config: VllmConfig):
        self.config = vllm_config
        mc, cc = vllm_config.model_config, vllm_config.cache_config
        lc = vllm_config.lora_config
        self.tokenizer = load_tokenizer(mc.tokenizer)
        self.executor = get_executor_class(vllm_config)(vllm_config)
        self.num_kv_blocks = self.executor.determine_num_available_blocks()
        capacity = self.num_kv_blocks * cc.block_size
        if capacity < mc.max_model_len:
            self.executor.shutdown()
            raise ValueError(
                f"max_model_len ({mc.max_model_len}) does not fit in the KV cache "
                f"({self.num_kv_blocks} blocks = {capacity} tokens); lower "
                "--max-model-len or raise --kv-cache-space"
            )
        self.executor.initialize_cache(self.num_kv_blocks)
        # With async scheduling, pipeline stages overlap: one request group per
        # stage, and a step in flight for each (ParallelConfig.request_groups).
        groups = vllm_config.parallel_config.request_groups(
            vllm_config.scheduler_config.async_scheduling
        )
        self.steps = StepQueue(
            self.executor, vllm_config.scheduler_config.async_scheduling, groups
        )
        logger.info("KV cache: %d blocks (%d tokens)", self.num_kv_blocks, capacity)
        self.scheduler = Scheduler(
            vllm_config.scheduler_config,
            BlockManager(
                self.num_kv_blocks,
                cc.block_size,
                cc.watermark,
                enable_caching=cc.enable_prefix_caching,
            ),
            max_loras=lc.max_loras if lc else None,
            num_groups=groups,
        )
        self.loras = LoRARegistry(lc, _lora_targets(vllm_config) if lc else {})
        self.output_processor = OutputProcessor(
            self.tokenizer, self.tokenizer.eos_token_id, mc.max_model_len
        )
        self.input_validator = InputValidator.from_config(
            vllm_config, self.num_kv_blocks, self.tokenizer
        )
        self._seeds = random.Random(mc.seed)
        self._ids = itertools.count()
        self._child_ids = itertools.count()

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs) -> "LLMEngine":
        return cls(engine_args.create_engine_config())

    def get_tokenizer(self):
        return self.tokenizer

    def add_request(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams | None = None,
        lora_request: LoRARequest | None = None,
    ) -> None:
        """Raises ValueError or TypeError naming the field for bad input (see
        input_validation), before anything is queued; other requests are
        unaffected."""
        checked = self.input_validator.check(request_id, prompt, params)
        lora = self.loras.check(lora_request)
        if request_id in self.output_processor.parents:
            raise ValueError(f"request_id {request_id!r} is already in use")
        params = checked.params
        token_ids = checked.prompt_token_ids
        children = []
        for i in range(params.n):
            if params.seed is None:
                seed = self._seeds.getrandbits(63)
            else:
                seed = (params.seed + i * 0x9E3779B97F4A7C15) % (1 << 63)
            # Internal ids: short on the wire, and no user id can clash with them.
            child_id = str(next(self._child_ids))
            options = params.to_options(seed, self.tokenizer.eos_token_id)
            children.append(
                Request(child_id, token_ids, options, checked.max_tokens, lora=lora)
            )
        parent = ParentRequest(
            request_id, checked.prompt, token_ids, params, lora_request=lora_request
        )
        self.output_processor.add_request(parent, children)
        for req in children:
            self.scheduler.add_request(req)

    def abort_request(self, request_id: str | Iterable[str]) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        for rid in ids:
            children = self.output_processor.abort(rid)
            self.scheduler.finish_requests(children, RequestStatus.FINISHED_ABORTED)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def get_num_unfinished_requests(self) -> int:
        return len(self.output_processor.parents)

    def step(self) -> list[RequestOutput]:
        scheduled = self.scheduler.schedule()
        done, sampled = self.steps.run(scheduled)  # an older step's, when async
        return self._update(done, sampled) + self._settle()

    def _settle(self) -> list[RequestOutput]:
        """Once every request is done, reads what is still in flight (tokens
        past a stop, which nobody sees), so an idle engine holds no step and
        control calls find the workers free."""
        if self.scheduler.has_unfinished_requests():
            return []
        return [o for d, s in self.steps.drain() for o in self._update(d, s)]

    def _update(
        self, scheduled: SchedulerOutput, sampled: SamplerOutput | None
    ) -> list[RequestOutput]:
        updated = self.scheduler.update_from_output(scheduled, sampled)
        outputs, finished = self.output_processor.process(updated, sampled)
        for status, req_ids in finished.items():
            self.scheduler.finish_requests(req_ids, status)
        return outputs

    # LoRA adapters: every call reaches every worker rank through collective_rpc.

    def add_lora(self, lora_request: LoRARequest) -> bool:
        """Loads the adapter on every rank now; -> whether it was not loaded."""
        spec = self.loras.check(lora_request)
        return self.executor.collective_rpc("add_lora", (spec,))[0]

    def remove_lora(self, lora_id: int) -> bool:
        """Unloads (and unpins) the adapter; requests still running with it reload
        it. -> whether it was loaded."""
        self.loras.remove(lora_id)
        return self.executor.collective_rpc("remove_lora", (lora_id,))[0]

    def pin_lora(self, lora_id: int) -> bool:
        """Keeps an added adapter loaded until remove_lora."""
        spec = self.loras.get(lora_id)
        return self.executor.collective_rpc("pin_lora", (spec,))[0]

    def list_loras(self) -> set[int]:
        """Ids of the adapters loaded on the workers (rank 0's view; every rank
        holds the same)."""
        if self.config.lora_config is None:
            return set()
        return set(self.executor.collective_rpc("list_loras")[0])

    def next_request_id(self) -> str:
        return str(next(self._ids))

    def shutdown(self) -> None:
        executor = getattr(self, "executor", None)
        if executor is not None:
            executor.shutdown()
            self.executor = None


def _lora_targets(config: VllmConfig) -> dict[str, tuple[int, int]]:
    """What adapters may target, from the model class: no model is built here."""
    from vllm.model_executor.models.registry import resolve_model_class

    mc = config.model_config
    cls = resolve_model_class(getattr(mc.hf_config, "architectures", None))
    return cls.lora_targets(mc)
