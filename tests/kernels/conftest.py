"""Shared setup for the kernel tests.

These tests exist to check the compiled kernels, so a missing extension is a
failure (CI builds it with `pip install -e . --no-build-isolation`), never a skip.
"""

import pytest
import torch

from vllm import _custom_ops as ops


@pytest.fixture(autouse=True)
def _kernels_built_and_seeded():
    assert ops.HAS_KERNELS, (
        "vllm._C is not built: run `pip install -e . --no-build-isolation`"
    )
    torch.manual_seed(0)
