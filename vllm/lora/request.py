"""``LoRARequest``: which adapter a request runs with, as vLLM users name it."""

import warnings
from dataclasses import dataclass

from vllm.messages import LoRASpec


@dataclass
class LoRARequest:
    """An adapter in the PEFT folder format (adapter_config.json and
    adapter_model.safetensors). ``lora_int_id`` (>= 1) identifies it: requests
    with the same id share one loaded copy. The engine checks it when a request
    or ``add_lora`` first names it."""

    lora_name: str
    lora_int_id: int
    lora_path: str = ""
    # Older name of lora_path, still accepted.
    lora_local_path: str | None = None
    base_model_name: str | None = None  # accepted for compatibility; unused

    def __post_init__(self) -> None:
        if self.lora_local_path:
            warnings.warn(
                "lora_local_path is deprecated; use lora_path",
                DeprecationWarning,
                stacklevel=3,
            )
            self.lora_path = self.lora_path or self.lora_local_path

    @property
    def adapter_id(self) -> int:
        return self.lora_int_id

    def to_spec(self) -> LoRASpec:
        return LoRASpec(self.lora_int_id, self.lora_name, self.lora_path)
