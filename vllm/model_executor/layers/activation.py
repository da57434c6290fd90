import torch
from torch import nn

from vllm import _custom_ops as ops


class SiluAndMul(nn.Module):
    def __init__(self, kernels: bool = True):
        super().__init__()
        self.kernels = kernels  # use the compiled kernel where it applies

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, 2I] -> [T, I]
        out = torch.empty(x.shape[0], x.shape[1] // 2, dtype=x.dtype, device=x.device)
        ops.silu_and_mul(out, x, self.kernels)
        return out
