"""Builds the model for one tensor-parallel rank (and pipeline stage: its layers
only) and fills its weights."""

import torch
from torch import nn

from vllm.config import ModelConfig
from vllm.distributed.parallel_state import TensorParallelGroup
from vllm.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear
from vllm.model_executor.layers.vocab_parallel_embedding import (
    VocabParallelEmbedding,
)
from vllm.model_executor.models.registry import resolve_model_class


def get_model(
    model_config: ModelConfig,
    tp: TensorParallelGroup,
    layers: range | None = None,  # a pipeline stage's layers; None: all
) -> nn.Module:
    cls = resolve_model_class(getattr(model_config.hf_config, "architectures", None))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(model_config.dtype)
    try:
        model = cls(model_config, tp, layers)
    finally:
        torch.set_default_dtype(previous)
    if model_config.weight_dtype not in (None, model_config.dtype):
        _store_matrices_as(model, model_config.weight_dtype)
    if model_config.load_format == "dummy":
        _init_dummy(model, model_config.seed)
    else:
        from vllm.model_executor.model_loader.weight_utils import iterate_weights

        weights = iterate_weights(model_config.model_path, model_config.load_format)
        loaded = model.load_weights(weights)
        missing = {n for n, _ in model.named_parameters()} - loaded
        if missing:
            raise ValueError(
                f"checkpoint at {model_config.model_path} is missing weights for "
                f"{sorted(missing)[:5]} (and {max(0, len(missing) - 5)} more)"
            )
    return model.eval()


def _init_dummy(model: nn.Module, seed: int) -> None:
    """Small random weights: enough to exercise every code path at full cost.
    Norm weights stay 1 so activations keep a sane scale."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if "norm" in name:
            continue
        values = torch.empty(param.shape, dtype=torch.float32)
        values.uniform_(-0.05, 0.05, generator=gen)
        param.data.copy_(values)


def _store_matrices_as(model: nn.Module, dtype: torch.dtype) -> None:
    """Weight matrices (linear layers, embedding, LM head) stored in `dtype`
    before loading, which rounds into them; norms and biases stay in the compute
    dtype. A tied LM head shares the embedding's parameter, converted once."""
    matrices = (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding)
    for module in model.modules():
        if isinstance(module, matrices) and module.weight.dtype != dtype:
            module.weight.data = module.weight.data.to(dtype)
