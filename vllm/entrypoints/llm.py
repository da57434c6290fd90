"""``LLM``: offline batched generation, as vLLM users know it."""

import time
from collections.abc import Sequence
from types import NoneType
from typing import Any

from tqdm import tqdm

from vllm.beam_search import BeamSearch, BeamSearchOutput, BeamSearchParams
from vllm.engine.arg_utils import EngineArgs
from vllm.engine.llm_engine import LLMEngine, PromptType
from vllm.field_checks import shown
from vllm.lora.request import LoRARequest
from vllm.outputs import RequestOutput
from vllm.sampling_params import SamplingParams
from vllm.transformers_utils.model_resolver import DEFAULT_MODEL


class LLM:
    def __init__(self, model: str = DEFAULT_MODEL, **kwargs: Any):
        engine_args = EngineArgs(model=model, **kwargs)
        self.llm_engine = LLMEngine.from_engine_args(engine_args)
        self._next_request_id = 0

    def get_tokenizer(self):
        return self.llm_engine.get_tokenizer()

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
    ) -> list[RequestOutput]:
        """All or nothing: if any prompt or parameter set is refused, none of the
        batch is run (or left behind) and the request ids are not used up.
        lora_request: one adapter for every prompt, or one (or None) each."""
        prompts = _as_list("prompts", prompts, (str, dict))
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params] * len(prompts)
        sampling_params = _as_list("sampling_params", sampling_params, SamplingParams)
        if len(sampling_params) != len(prompts):
            raise ValueError(
                f"sampling_params has {len(sampling_params)} entries for "
                f"{len(prompts)} prompts"
            )
        if lora_request is None or isinstance(lora_request, LoRARequest):
            lora_request = [lora_request] * len(prompts)
        lora_request = _as_list("lora_request", lora_request, (LoRARequest, NoneType))
        if len(lora_request) != len(prompts):
            raise ValueError(
                f"lora_request has {len(lora_request)} entries for {len(prompts)} "
                "prompts"
            )
        engine = self.llm_engine
        ids = [str(self._next_request_id + i) for i in range(len(prompts))]
        items = zip(prompts, sampling_params, lora_request)
        for i, (prompt, params, lora) in enumerate(items):
            try:
                engine.add_request(ids[i], prompt, params, lora_request=lora)
            except BaseException as exc:
                engine.abort_request(ids[:i])  # leave the engine as it was
                if len(ids) > 1 and type(exc) in (ValueError, TypeError):
                    raise type(exc)(f"prompts[{i}]: {exc}") from exc
                raise
        self._next_request_id += len(ids)
        return self._run(ids, use_tqdm)

    def chat(
        self,
        messages: list[dict[str, str]] | list[list[dict[str, str]]],
        sampling_params: SamplingParams | None = None,
        use_tqdm: bool = True,
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        lora_request: LoRARequest | None = None,
    ) -> list[RequestOutput]:
        conversations = (
            messages if messages and isinstance(messages[0], list) else [messages]
        )
        tokenizer = self.get_tokenizer()
        prompts = []
        for conversation in conversations:
            text = tokenizer.apply_chat_template(
                conversation,
                chat_template=chat_template,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
            )
            ids = tokenizer.encode(text, add_special_tokens=False)
            prompts.append({"prompt": text, "prompt_token_ids": ids})
        return self.generate(prompts, sampling_params, use_tqdm, lora_request)

    def beam_search(
        self, prompts: PromptType | Sequence[PromptType], params: BeamSearchParams
    ) -> list[BeamSearchOutput]:
        """vLLM's beam search (vllm/beam_search.py): all prompts' searches step
        together, each step one token for every live beam. Prompts are strings
        or {"prompt_token_ids": [...]} dicts."""
        prompts = _as_list("prompts", prompts, (str, dict))
        tokenizer = self.get_tokenizer()
        engine = self.llm_engine
        searches = []
        for prompt in prompts:
            if isinstance(prompt, str):
                ids = tokenizer.encode(prompt)
            else:
                ids = prompt.get("prompt_token_ids") or tokenizer.encode(
                    prompt["prompt"]
                )
            searches.append(
                BeamSearch(
                    ids,
                    params,
                    tokenizer.eos_token_id,
                    engine.config.model_config.max_model_len,
                )
            )
        while not all(s.done for s in searches):
            live = [s for s in searches if not s.done]
            batch = [
                ({"prompt_token_ids": p}, s.step_params())
                for s in live
                for p in s.step_prompts()
            ]
            outs = self.generate(
                [b[0] for b in batch], [b[1] for b in batch], use_tqdm=False
            )
            positions = iter(
                {t: lp.logprob for t, lp in o.outputs[0].logprobs[0].items()}
                for o in outs
            )
            for s in live:
                s.advance([next(positions) for _ in s.step_prompts()])
        return [s.result(tokenizer) for s in searches]

    def _run(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        engine = self.llm_engine
        done: dict[str, RequestOutput] = {}
        wanted = set(ids)
        bar = tqdm(total=len(ids), desc="Processed prompts", disable=not use_tqdm)
        start, in_toks, out_toks = time.perf_counter(), 0, 0
        try:
            while engine.has_unfinished_requests() and len(done) < len(ids):
                for out in engine.step():
                    if out.finished and out.request_id in wanted:
                        done[out.request_id] = out
                        in_toks += len(out.prompt_token_ids)
                        out_toks += sum(len(c.token_ids) for c in out.outputs)
                        elapsed = max(time.perf_counter() - start, 1e-9)
                        bar.set_postfix_str(
                            f"input: {in_toks / elapsed:.1f} toks/s, "
                            f"output: {out_toks / elapsed:.1f} toks/s"
                        )
                        bar.update(1)
        except BaseException:
            engine.abort_request([i for i in ids if i not in done])
            raise
        finally:
            bar.close()
        return [done[i] for i in ids]

    # LoRA adapters, on every worker rank (see LLMEngine).

    def add_lora(self, lora_request: LoRARequest) -> bool:
        return self.llm_engine.add_lora(lora_request)

    def remove_lora(self, lora_id: int) -> bool:
        return self.llm_engine.remove_lora(lora_id)

    def pin_lora(self, lora_id: int) -> bool:
        return self.llm_engine.pin_lora(lora_id)

    def list_loras(self) -> set[int]:
        return self.llm_engine.list_loras()

    def shutdown(self) -> None:
        engine = getattr(self, "llm_engine", None)
        if engine is not None:
            engine.shutdown()
            self.llm_engine = None

    def __del__(self) -> None:
        self.shutdown()


def _as_list(name: str, value: Any, item_types: type | tuple[type, ...]) -> list:
    """One item or a list/tuple of items -> a list; anything else is a TypeError
    naming the argument and its offending element."""
    if isinstance(value, item_types):
        return [value]
    if not isinstance(value, list | tuple):
        raise TypeError(
            f"{name} must be {_type_names(item_types)} or a list of them; got "
            f"{type(value).__name__} {shown(value)}"
        )
    for i, item in enumerate(value):
        if not isinstance(item, item_types):
            raise TypeError(
                f"{name}[{i}] must be {_type_names(item_types)}; got "
                f"{type(item).__name__} {shown(item)}"
            )
    return list(value)


def _type_names(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in types)
