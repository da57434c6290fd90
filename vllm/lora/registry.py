"""The engine's view of LoRA adapters: each one is checked once, when a request or
``add_lora`` first names it, from its config and safetensors header (no weights are
read in the engine process), and names and ids stay one-to-one."""

from vllm.config import LoRAConfig
from vllm.field_checks import check_int, check_str
from vllm.lora.peft_loader import inspect_adapter
from vllm.lora.request import LoRARequest
from vllm.messages import LoRASpec


class LoRARegistry:
    def __init__(
        self,
        config: LoRAConfig | None,
        targets: dict[str, tuple[int, int]],  # HF module path -> (in, out)
    ):
        self.config = config
        self.targets = targets
        self._by_id: dict[int, LoRASpec] = {}
        self._by_name: dict[str, int] = {}

    def check(self, lora_request: LoRARequest | None) -> LoRASpec | None:
        """-> what workers need to load the adapter (None for the base model);
        ValueError naming the field for bad input."""
        if lora_request is None:
            return None
        if self.config is None:
            raise ValueError(
                "lora_request given but LoRA is off: start the engine with "
                "enable_lora=True (--enable-lora)"
            )
        if not isinstance(lora_request, LoRARequest):
            raise TypeError(
                "lora_request must be a vllm.lora.request.LoRARequest or None; got "
                f"{type(lora_request).__name__}"
            )
        lora_id = check_int("lora_request.lora_int_id", lora_request.lora_int_id, 1)
        name = check_str("lora_request.lora_name", lora_request.lora_name)
        path = check_str("lora_request.lora_path", lora_request.lora_path)
        if not name:
            raise ValueError("lora_request.lora_name must not be empty")
        spec = LoRASpec(lora_id, name, path)
        known = self._by_id.get(lora_id)
        if known == spec:
            return known
        owner = self._by_name.get(name)
        if owner is not None and owner != lora_id:
            raise ValueError(
                f"lora_request.lora_name {name!r} already names lora_int_id "
                f"{owner}; got lora_int_id {lora_id}"
            )
        if known is not None:
            raise ValueError(
                f"lora_request.lora_int_id {lora_id} already names adapter "
                f"{known.lora_name!r} at {known.lora_path!r}; remove_lora it first"
            )
        inspect_adapter(spec.lora_path, self.targets, self.config.max_lora_rank)
        self._by_id[lora_id] = spec
        self._by_name[name] = lora_id
        return spec

    def get(self, lora_id: int) -> LoRASpec:
        if self.config is None:
            raise ValueError("LoRA is off: start the engine with enable_lora=True")
        if lora_id not in self._by_id:
            raise ValueError(f"lora_id {lora_id} names no adapter added so far")
        return self._by_id[lora_id]

    def remove(self, lora_id: int) -> None:
        spec = self.get(lora_id)
        del self._by_id[lora_id]
        del self._by_name[spec.lora_name]
