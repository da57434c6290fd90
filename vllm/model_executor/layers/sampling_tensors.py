"""Per-row sampling parameters as tensors, so the sampler works on a whole batch
with tensor ops instead of a Python loop over its requests.

The worker's persistent batch (vllm/worker/input_batch.py) keeps these columns
for every request it holds and hands the sampler the rows of a step by index;
``from_rows`` builds the same thing from request objects (tests, ad-hoc use).
"""

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Protocol

import torch

from vllm.messages import SamplingOptions

# splitmix64's constants as the signed 64-bit integers torch holds: int64
# arithmetic wraps modulo 2**64 exactly as the masked Python version does.
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


class SamplingRow(Protocol):
    sampling: SamplingOptions
    token_ids: list[int]  # prompt then outputs
    num_prompt_tokens: int


@dataclass
class SamplingTensors:
    temperature: torch.Tensor  # [N] float32, 0 means greedy
    top_k: torch.Tensor  # [N] int64, -1 disables
    top_p: torch.Tensor  # [N] float32
    min_p: torch.Tensor  # [N] float32
    presence_penalty: torch.Tensor  # [N] float32
    frequency_penalty: torch.Tensor  # [N] float32
    repetition_penalty: torch.Tensor  # [N] float32
    seed: torch.Tensor  # [N] int64
    output_index: torch.Tensor  # [N] int64: outputs so far, the next one's index

    @classmethod
    def from_rows(cls, rows: Sequence[SamplingRow]) -> "SamplingTensors":
        cols = {f.name: [] for f in fields(cls)}
        for r in rows:
            for name, value in option_values(r.sampling).items():
                cols[name].append(value)
            cols["output_index"].append(len(r.token_ids) - r.num_prompt_tokens)
        return cls(
            **{name: torch.tensor(v, dtype=DTYPES[name]) for name, v in cols.items()}
        )

    def select(self, rows: torch.Tensor) -> "SamplingTensors":  # rows: [R] int64
        return SamplingTensors(
            **{f.name: getattr(self, f.name)[rows] for f in fields(self)}
        )


# Column dtypes; float32 as the logits, so a row's value is the same float
# whether it came from a tensor or a Python float.
DTYPES = {
    "temperature": torch.float32,
    "top_k": torch.long,
    "top_p": torch.float32,
    "min_p": torch.float32,
    "presence_penalty": torch.float32,
    "frequency_penalty": torch.float32,
    "repetition_penalty": torch.float32,
    "seed": torch.long,
    "output_index": torch.long,
}


def option_values(s: SamplingOptions) -> dict[str, float | int]:
    """A request's values for every column but output_index."""
    return {
        "temperature": s.temperature,
        "top_k": s.top_k,
        "top_p": s.top_p,
        "min_p": s.min_p,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "repetition_penalty": s.repetition_penalty,
        "seed": s.seed,
    }


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def uniform_points(
    seed: torch.Tensor,  # [N] int64
    index: torch.Tensor,  # [N] int64
) -> torch.Tensor:  # [N] float64 in (0, 1]
    """sampler.uniform_point for every row at once, bit for bit."""
    z = seed * _GOLDEN + index + 1
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    z = _shr(z ^ _shr(z, 31), 1)
    return ((z >> 10) + 1).double() * 2.0**-53
