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
from vllm.engine.scheduler import Scheduler
from vllm.executor.executor_base import Executor
from vllm.logger import init_logger
from vllm.outputs import RequestOutput
from vllm.sampling_params import SamplingParams
from vllm.transformers_utils.model_resolver import load_tokenizer

logger = init_logger(__name__)

PromptType = str | dict[str, Any]


class LLMEngine:
    def __init__(self, vllm_config: VllmConfig):
        self.config = vllm_config
        mc, cc = vllm_config.model_config, vllm_config.cache_config
        self.tokenizer = load_tokenizer(mc.tokenizer)
        self.executor = Executor.get_class(vllm_config)(vllm_config)
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
        logger.info("KV cache: %d blocks (%d tokens)", self.num_kv_blocks, capacity)
        self.scheduler = Scheduler(
            vllm_config.scheduler_config,
            BlockManager(self.num_kv_blocks, cc.block_size, cc.watermark),
        )
        self.output_processor = OutputProcessor(
            self.tokenizer, self.tokenizer.eos_token_id, mc.max_model_len
        )
        self.input_validator = InputValidator.from_config(
            vllm_config, self.num_kv_blocks, self.tokenizer
        )
        self._parents: dict[str, ParentRequest] = {}
        self._seeds = random.Random(mc.seed)
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
    ) -> None:
        """Raises ValueError or TypeError naming the field for bad input (see
        input_validation), before anything is queued; other requests are
        unaffected."""
        checked = self.input_validator.check(request_id, prompt, params)
        if request_id in self._parents:
            raise ValueError(f"request_id {request_id!r} is already in use")
        params = checked.params
        token_ids = checked.prompt_token_ids
        parent = ParentRequest(request_id, checked.prompt, token_ids, params)
        for i in range(params.n):
            if params.seed is None:
                seed = self._seeds.getrandbits(63)
            else:
                seed = (params.seed + i * 0x9E3779B97F4A7C15) % (1 << 63)
            # Internal ids: short on the wire, and no user id can clash with them.
            child_id = str(next(self._child_ids))
            options = params.to_options(seed, self.tokenizer.eos_token_id)
            req = Request(child_id, token_ids, options, checked.max_tokens)
            self.output_processor.attach(req, parent, i)
            self.scheduler.add_request(req)
        self._parents[request_id] = parent

    def abort_request(self, request_id: str | Iterable[str]) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        for rid in ids:
            parent = self._parents.pop(rid, None)
            if parent is not None:
                self.scheduler.finish_requests(
                    parent.children, RequestStatus.FINISHED_ABORTED
                )

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def get_num_unfinished_requests(self) -> int:
        return len(self._parents)

    def step(self) -> list[RequestOutput]:
        scheduled = self.scheduler.schedule()
        sampled = (
            None
            if scheduled.is_empty
            else self.executor.execute_model(scheduled.request)
        )
        return self._update(scheduled, sampled)

    def _update(self, scheduled, sampled) -> list[RequestOutput]:
        updated = self.scheduler.update_from_output(scheduled, sampled)
        outputs = self.output_processor.process(
            updated, sampled, self.scheduler.requests, self.scheduler.finish_requests
        )
        for out in outputs:
            if out.finished:
                self._parents.pop(out.request_id, None)
        return outputs

    def shutdown(self) -> None:
        executor = getattr(self, "executor", None)
        if executor is not None:
            executor.shutdown()
            self.executor = None
