"""A worker's LoRA adapters: loaded copies in memory and the active slots.

Adapters are loaded from their folder on first use (or by ``add``) and kept, at
most ``max_cpu_loras`` of them, least recently used evicted first; pinned ones stay.
Each step's adapters (at most ``max_loras``: the scheduler sees to it) sit in the
LoRA layers' slots. A step is handled in two halves so every rank ends up in the
same state whoever decides: ``plan`` (on a rank that holds the step's requests)
picks slots, ``apply`` (on every rank, before the forward pass) fills them.
"""

from collections import OrderedDict
from dataclasses import dataclass

import msgspec
import torch
from torch import nn

from vllm.config import VllmConfig
from vllm.distributed.parallel_state import TensorParallelGroup
from vllm.logger import init_logger
from vllm.lora.layers import LoRABatch, LoRALinear
from vllm.lora.peft_loader import inspect_adapter, load_adapter
from vllm.messages import LoRASpec

logger = init_logger(__name__)

# Full-size (A [r, in], B [out, r]) per HF module path, scaling folded into B.
Adapter = dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LoRAInputs:
    """What a step's forward pass needs: the same on every rank."""

    row_slots: torch.Tensor  # [T] int64: each row's slot, -1 for the base model
    fills: list[tuple[int, LoRASpec]]  # slots to (re)load before the forward
    used: list[int]  # the step's adapter ids, most recently used last


class LoRAManager:
    def __init__(self, model: nn.Module, config: VllmConfig):
        lc = config.lora_config
        self.max_loras, self.capacity = lc.max_loras, lc.cpu_capacity
        self.max_rank = lc.max_lora_rank
        self.dtype = config.model_config.dtype
        self.targets = type(model).lora_targets(config.model_config)
        self.batch = LoRABatch()
        # HF module path -> (layer, part index, shard id for its weight_loader)
        self.parts: dict[str, tuple[LoRALinear, int, str | int | None]] = {}
        self.layers = self._wrap(model, type(model).projections)
        self.cache: OrderedDict[int, Adapter] = OrderedDict()  # LRU first
        self.pinned: set[int] = set()
        self.slots: list[int] = [0] * self.max_loras  # adapter id per slot, 0 free
        self.slot_used = [0] * self.max_loras  # step count of each slot's last use
        self.steps = 0

    def _wrap(self, model: nn.Module, projections: dict) -> list[LoRALinear]:
        layers = []
        for path, module in list(model.named_modules()):
            parent_path, _, name = path.rpartition(".")
            if name not in projections:
                continue
            parts = projections[name]
            layer = LoRALinear(
                module,
                self.batch,
                len(parts),
                self.max_loras,
                self.max_rank,
                self.dtype,
            )
            setattr(model.get_submodule(parent_path), name, layer)
            layers.append(layer)
            for index, (hf_name, shard_id) in enumerate(parts):
                self.parts[f"{parent_path}.{hf_name}"] = (layer, index, shard_id)
        return layers

    # Control calls (collective_rpc, so every rank makes the same ones).

    def add(self, spec: LoRASpec) -> bool:
        """Loads the adapter if it is not loaded; -> whether it was loaded now."""
        if spec.lora_int_id in self.cache:
            self.cache.move_to_end(spec.lora_int_id)
            return False
        if len(self.pinned) >= self.capacity:
            raise ValueError(
                f"max_cpu_loras ({self.capacity}) adapters are pinned: none can be "
                "added; unpin (remove_lora) one or raise max_cpu_loras"
            )
        self._get(spec)
        return True

    def remove(self, lora_id: int) -> bool:
        self.pinned.discard(lora_id)
        for slot, held in enumerate(self.slots):
            if held == lora_id:
                self.slots[slot] = 0
        return self.cache.pop(lora_id, None) is not None

    def pin(self, spec: LoRASpec) -> bool:
        """Keeps the adapter loaded until removed (loading it if need be)."""
        if spec.lora_int_id not in self.pinned and len(self.pinned) >= self.capacity:
            raise ValueError(
                f"max_cpu_loras ({self.capacity}) adapters are pinned already"
            )
        self.add(spec)
        self.pinned.add(spec.lora_int_id)
        return True

    def loaded_ids(self) -> list[int]:
        return sorted(self.cache)

    # The two halves of a step.

    def plan(self, rows: list[tuple[LoRASpec | None, int]]) -> LoRAInputs:
        """rows: the step's requests in row order, with their row counts."""
        used: dict[int, LoRASpec] = {}
        for spec, _ in rows:
            if spec is not None:
                used.setdefault(spec.lora_int_id, spec)
        if len(used) > self.max_loras:
            raise RuntimeError(
                f"a step uses {len(used)} adapters; max_loras is {self.max_loras}"
            )
        slot_of = {lora_id: s for s, lora_id in enumerate(self.slots) if lora_id}
        taken = {slot_of[i] for i in used if i in slot_of}
        fills = []
        for lora_id, spec in used.items():
            if lora_id not in slot_of:
                free = [s for s in range(self.max_loras) if s not in taken]
                slot = min(free, key=lambda s: (self.slots[s] != 0, self.slot_used[s]))
                slot_of[lora_id] = slot
                taken.add(slot)
                fills.append((slot, spec))
        counts = torch.tensor([n for _, n in rows])
        slots = torch.tensor(
            [-1 if s is None else slot_of[s.lora_int_id] for s, _ in rows]
        )
        return LoRAInputs(torch.repeat_interleave(slots, counts), fills, list(used))

    def apply(self, inp: LoRAInputs) -> None:
        self.steps += 1
        for lora_id in inp.used:  # before loading: the step's own stay cached
            if lora_id in self.cache:
                self.cache.move_to_end(lora_id)
        for slot, spec in inp.fills:
            self._fill(slot, spec)
        for slot, lora_id in enumerate(self.slots):
            if lora_id in inp.used:
                self.slot_used[slot] = self.steps
        self.batch.set(inp.row_slots, self.max_loras)

    def _get(self, spec: LoRASpec) -> Adapter:
        """The adapter from the cache, else from its folder into the cache
        (evicting the least recently used unpinned one when full; if all are
        pinned, it is used once without being kept)."""
        adapter = self.cache.get(spec.lora_int_id)
        if adapter is not None:
            self.cache.move_to_end(spec.lora_int_id)
            return adapter
        modules = inspect_adapter(spec.lora_path, self.targets, self.max_rank)
        adapter = load_adapter(spec.lora_path, modules, self.dtype)
        while len(self.cache) >= self.capacity:
            victim = next((i for i in self.cache if i not in self.pinned), None)
            if victim is None:
                logger.warning(
                    "every cached LoRA adapter is pinned; not caching %d",
                    spec.lora_int_id,
                )
                return adapter
            del self.cache[victim]
        self.cache[spec.lora_int_id] = adapter
        return adapter

    def _fill(self, slot: int, spec: LoRASpec) -> None:
        adapter = self._get(spec)
        for layer in self.layers:
            layer.clear(slot)
        for module, (a, b) in adapter.items():
            layer, part, shard_id = self.parts[module]
            layer.set_part(slot, part, shard_id, a, b)
        self.slots[slot] = spec.lora_int_id


# The legacy control plane's followers get no step message: the driver sends them
# each step's LoRAInputs over torch.distributed, after the model inputs.
_FILLS = msgspec.msgpack.Decoder(tuple[list[tuple[int, LoRASpec]], list[int]])


def broadcast_inputs(tp: TensorParallelGroup, inp: LoRAInputs) -> None:
    """From the driver (TP rank 0)."""
    extra = msgspec.msgpack.encode((inp.fills, inp.used))
    padded = extra + bytes(-len(extra) % 8)
    tail = torch.frombuffer(bytearray(padded), dtype=torch.int64)
    tp.broadcast(torch.tensor([len(inp.row_slots), len(extra)]))
    tp.broadcast(torch.cat([inp.row_slots, tail]))


def receive_inputs(tp: TensorParallelGroup) -> LoRAInputs:
    """On the followers, mirroring broadcast_inputs."""
    header = torch.empty(2, dtype=torch.long)
    tp.broadcast(header)
    num_rows, num_bytes = header.tolist()
    body = torch.empty(num_rows + -(-num_bytes // 8), dtype=torch.long)
    tp.broadcast(body)
    raw = body[num_rows:].numpy().tobytes()[:num_bytes]
    fills, used = _FILLS.decode(raw)
    return LoRAInputs(body[:num_rows], [tuple(f) for f in fills], used)
