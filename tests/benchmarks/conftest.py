"""Fixtures shared by the benchmark smoke tests."""

import pytest


@pytest.fixture(scope="module")
def tiny_dummy_model(tmp_path_factory, smollm2_path) -> str:
    """A config-only tiny Llama folder (weights come from --load-format dummy)."""
    from vllm.transformers_utils.tiny_model import tiny_config, write_model_folder

    out = str(tmp_path_factory.mktemp("tiny_bench_model"))
    return write_model_folder(out, tiny_config(max_position_embeddings=256))
