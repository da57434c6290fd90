"""Flag combinations are checked once, when the configs are built."""

import argparse

import pytest

from vllm import EngineArgs


@pytest.fixture
def clean_env(monkeypatch):
    for key in (
        "VLLM_USE_SPMD_WORKER",
        "VLLM_USE_RAY_SPMD_WORKER",
        "VLLM_USE_RAY_COMPILED_DAG",
    ):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_spmd_with_mp_backend_says_what_to_set(clean_env, tiny_model):
    clean_env.setenv("VLLM_USE_SPMD_WORKER", "1")
    args = EngineArgs(
        model=tiny_model("llama_gqa"),
        tensor_parallel_size=2,
        distributed_executor_backend="mp",
    )
    with pytest.raises(ValueError, match="--distributed-executor-backend ray"):
        args.create_engine_config()


def test_compiled_dag_without_spmd_says_what_to_set(clean_env, tiny_model):
    clean_env.setenv("VLLM_USE_RAY_COMPILED_DAG", "1")
    args = EngineArgs(model=tiny_model("llama_gqa"), distributed_executor_backend="ray")
    with pytest.raises(ValueError, match="VLLM_USE_SPMD_WORKER=1"):
        args.create_engine_config()


@pytest.mark.parametrize("flag", ["VLLM_USE_SPMD_WORKER", "VLLM_USE_RAY_SPMD_WORKER"])
def test_spmd_flag_and_alias_select_ray(clean_env, tiny_model, flag):
    clean_env.setenv(flag, "1")
    config = EngineArgs(
        model=tiny_model("llama_gqa"), tensor_parallel_size=2
    ).create_engine_config()
    assert config.parallel_config.use_spmd_worker
    assert config.parallel_config.distributed_executor_backend == "ray"


def test_default_backend_is_uni_then_mp(clean_env, tiny_model):
    path = tiny_model("llama_gqa")
    one = EngineArgs(model=path).create_engine_config().parallel_config
    two = EngineArgs(model=path, tensor_parallel_size=2).create_engine_config()
    assert one.distributed_executor_backend == "uni"
    assert two.parallel_config.distributed_executor_backend == "mp"
    assert not two.parallel_config.use_spmd_worker


def test_uni_backend_refuses_tp(clean_env, tiny_model):
    args = EngineArgs(
        model=tiny_model("llama_gqa"),
        tensor_parallel_size=2,
        distributed_executor_backend="uni",
    )
    with pytest.raises(ValueError, match="'mp' or 'ray'"):
        args.create_engine_config()


def test_sliding_window_caps_max_model_len(tmp_path):
    from transformers import MistralConfig, Qwen2Config

    from vllm.config import derive_max_model_len

    windowed = MistralConfig(sliding_window=64, max_position_embeddings=512)
    assert derive_max_model_len(windowed) == 64
    assert derive_max_model_len(MistralConfig(sliding_window=None)) == 131072
    # Qwen2 carries a window size but leaves it off.
    qwen = Qwen2Config(sliding_window=64, use_sliding_window=False)
    assert derive_max_model_len(qwen) == qwen.max_position_embeddings


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], False),
        (["--enable-prefix-caching"], True),
        (["--enable-prefix-caching", "--no-enable-prefix-caching"], False),
    ],
)
def test_prefix_caching_flag(clean_env, tiny_model, argv, expected):
    parser = EngineArgs.add_cli_args(argparse.ArgumentParser())
    args = parser.parse_args(["--model", tiny_model("llama_gqa"), *argv])
    config = EngineArgs.from_cli_args(args).create_engine_config()
    assert config.cache_config.enable_prefix_caching is expected
