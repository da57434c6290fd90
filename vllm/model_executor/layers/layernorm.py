import torch
from torch import nn

from vllm import _custom_ops as ops


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6, kernels: bool = True):
        super().__init__()
        self.eps = eps
        self.kernels = kernels  # use the compiled kernel where it applies
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)

    def forward(
        self,
        x: torch.Tensor,  # [T, H]
        residual: torch.Tensor | None = None,  # [T, H]
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Without residual: norm(x). With it: (norm(x + residual), x + residual),
        fused so the sum is read once; both inputs are overwritten."""
        if residual is None:
            out = torch.empty_like(x)
            ops.rms_norm(out, x, self.weight, self.eps, self.kernels)
            return out
        ops.fused_add_rms_norm(x, residual, self.weight, self.eps, self.kernels)
        return x, residual
