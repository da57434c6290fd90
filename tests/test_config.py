"""Flag combinations are checked once, when the configs are built; every engine
argument's type and range before any process starts."""

import argparse
import math
import multiprocessing

import pytest
import torch

from vllm import LLM, EngineArgs


@pytest.fixture
def clean_env(monkeypatch):
    for key in (
        "VLLM_USE_SPMD_WORKER",
        "VLLM_USE_RAY_SPMD_WORKER",
        "VLLM_USE_RAY_COMPILED_DAG",
    ):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_spmd_with_mp_backend_selects_spawned_ranks(clean_env, tiny_model):
    from vllm.executor import get_executor_class

    clean_env.setenv("VLLM_USE_SPMD_WORKER", "1")
    config = EngineArgs(
        model=tiny_model("llama_gqa"),
        tensor_parallel_size=2,
        distributed_executor_backend="mp",
    ).create_engine_config()
    assert config.parallel_config.use_spmd_worker
    assert get_executor_class(config).__name__ == "SPMDMultiprocExecutor"


@pytest.mark.parametrize(
    "env, backend, wanted",
    [
        ({"VLLM_USE_SPMD_WORKER": "1"}, "uni", "mp or ray"),
        (
            {"VLLM_USE_SPMD_WORKER": "1", "VLLM_USE_RAY_COMPILED_DAG": "1"},
            "mp",
            "--distributed-executor-backend ray",
        ),
        ({"VLLM_MQ_MAX_CHUNK_BYTES_MB": "0"}, "uni", "VLLM_MQ_MAX_CHUNK_BYTES_MB"),
        ({"VLLM_MQ_SPIN_US": "-1"}, "uni", "VLLM_MQ_SPIN_US"),
    ],
)
def test_spmd_settings_say_what_to_set(clean_env, tiny_model, env, backend, wanted):
    for key, value in env.items():
        clean_env.setenv(key, value)
    args = EngineArgs(
        model=tiny_model("llama_gqa"), distributed_executor_backend=backend
    )
    with pytest.raises(ValueError, match=wanted):
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


def set_or_unset(env, name: str, value: str | None) -> None:
    if value is None:
        env.delenv(name, raising=False)
    else:
        env.setenv(name, value)


@pytest.mark.parametrize("value, expected", [(None, 1.0), ("0.25", 0.25), ("0", 0.0)])
def test_graph_idle_teardown_read_into_config(clean_env, tiny_model, value, expected):
    set_or_unset(clean_env, "VLLM_RAY_CGRAPH_IDLE_TEARDOWN_S", value)
    config = EngineArgs(model=tiny_model("llama_gqa")).create_engine_config()
    assert config.parallel_config.spmd_graph_idle_teardown_s == expected


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_graph_idle_teardown_refuses_bad_values(clean_env, tiny_model, value):
    clean_env.setenv("VLLM_RAY_CGRAPH_IDLE_TEARDOWN_S", value)
    args = EngineArgs(model=tiny_model("llama_gqa"))
    with pytest.raises(
        ValueError, match="VLLM_RAY_CGRAPH_IDLE_TEARDOWN_S must be >= 0"
    ):
        args.create_engine_config()


@pytest.mark.parametrize(
    "value, expected", [(None, "PACK"), ("strict_spread", "STRICT_SPREAD")]
)
def test_ray_placement_strategy_read_into_config(
    clean_env, tiny_model, value, expected
):
    set_or_unset(clean_env, "VLLM_RAY_PLACEMENT_STRATEGY", value)
    config = EngineArgs(model=tiny_model("llama_gqa")).create_engine_config()
    assert config.parallel_config.ray_placement_strategy == expected


def test_ray_placement_strategy_refuses_unknown_names(clean_env, tiny_model):
    clean_env.setenv("VLLM_RAY_PLACEMENT_STRATEGY", "scatter")
    args = EngineArgs(model=tiny_model("llama_gqa"))
    with pytest.raises(ValueError, match="VLLM_RAY_PLACEMENT_STRATEGY must be one"):
        args.create_engine_config()


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


# (argument, bad value, exception, start of the message)
BAD_ENGINE_ARGS = [
    ("model", None, TypeError, "model must be a string; got NoneType None"),
    ("tokenizer", 5, TypeError, "tokenizer must be a string or None; got int 5"),
    ("dtype", 16, TypeError, "dtype must be a string; got int 16"),
    ("dtype", "int8", ValueError, "dtype must be one of auto,"),
    ("seed", "0", TypeError, "seed must be an int; got str '0'"),
    ("seed", 2**64, ValueError, "seed must be in [-9223372036854775808, 9223"),
    ("max_model_len", 0, ValueError, "max_model_len must be >= 1; got 0"),
    ("max_model_len", 64.0, TypeError, "max_model_len must be an int or None"),
    ("max_model_len", 4096, ValueError, "max_model_len must be in [1, 2048] for"),
    ("block_size", "16", TypeError, "block_size must be an int; got str '16'"),
    ("block_size", 12, ValueError, "block_size must be a power of two up to 128"),
    ("max_num_seqs", 0, ValueError, "max_num_seqs must be >= 1; got 0"),
    ("max_num_seqs", 1.5, TypeError, "max_num_seqs must be an int; got float"),
    ("max_num_batched_tokens", 0, ValueError, "max_num_batched_tokens must be >="),
    ("kv_cache_space", math.nan, ValueError, "kv_cache_space must be a finite"),
    ("kv_cache_space", math.inf, ValueError, "kv_cache_space must be a finite"),
    ("kv_cache_space", 0, ValueError, "kv_cache_space must be a finite number > 0"),
    ("kv_cache_space", "4", TypeError, "kv_cache_space must be a number; got str"),
    ("num_gpu_blocks_override", 0, ValueError, "num_gpu_blocks_override must be"),
    ("num_gpu_blocks_override", 2.0, TypeError, "num_gpu_blocks_override must be"),
    ("tensor_parallel_size", 0, ValueError, "tensor_parallel_size must be >= 1"),
    ("tensor_parallel_size", "2", TypeError, "tensor_parallel_size must be an int"),
    ("distributed_executor_backend", "k8s", ValueError, "distributed_executor_b"),
    ("distributed_executor_backend", 1, TypeError, "distributed_executor_backe"),
    ("load_format", "pt", ValueError, "load_format must be one of ('auto',"),
    ("enforce_eager", "yes", TypeError, "enforce_eager must be True or False"),
    ("enable_prefix_caching", 1, TypeError, "enable_prefix_caching must be True or"),
    ("max_logprobs", -2, ValueError, "max_logprobs must be >= -1; got -2"),
    ("max_logprobs", 2.0, TypeError, "max_logprobs must be an int; got float"),
]


@pytest.mark.parametrize(
    "name, value, error, message",
    BAD_ENGINE_ARGS,
    ids=[f"{name}={value!r}" for name, value, _, _ in BAD_ENGINE_ARGS],
)
def test_bad_engine_argument_refused_before_any_process(
    clean_env, tiny_model, name, value, error, message
):
    kwargs = {"model": tiny_model("llama_gqa"), name: value}
    with pytest.raises(error) as info:
        LLM(**kwargs)
    assert str(info.value).startswith(message), str(info.value)
    assert multiprocessing.active_children() == []


def test_max_logprobs_flag(clean_env, tiny_model):
    parser = EngineArgs.add_cli_args(argparse.ArgumentParser())
    path = tiny_model("llama_gqa")
    for argv, want in [
        ([], 20),
        (["--max-logprobs", "5"], 5),
        (["--max-logprobs=-1"], -1),
    ]:
        args = EngineArgs.from_cli_args(parser.parse_args(["--model", path, *argv]))
        assert args.create_engine_config().model_config.max_logprobs == want


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


@pytest.mark.parametrize(
    "requested,stored,flags,want",
    [
        # auto keeps an fp32 checkpoint exact, even where bf16 is fast.
        ("auto", "float32", {"avx2", "avx512_bf16"}, (torch.float32, torch.float32)),
        ("auto", None, {"amx_bf16"}, (torch.float32, torch.float32)),
        # A 16-bit checkpoint runs in bf16 only where the CPU multiplies bf16.
        ("auto", "bfloat16", {"avx512_bf16"}, (torch.bfloat16, torch.bfloat16)),
        ("auto", "float16", {"amx_bf16"}, (torch.bfloat16, torch.bfloat16)),
        ("auto", "bfloat16", {"avx2", "fma"}, (torch.float32, torch.float32)),
        # float16 on CPU: fp16 weight matrices, fp32 arithmetic.
        ("float16", "float32", set(), (torch.float32, torch.float16)),
        ("half", "bfloat16", {"avx512_bf16"}, (torch.float32, torch.float16)),
        ("bfloat16", "float32", set(), (torch.bfloat16, torch.bfloat16)),
        ("float32", "bfloat16", {"avx512_bf16"}, (torch.float32, torch.float32)),
    ],
)
def test_resolve_dtype_on_cpu(requested, stored, flags, want):
    from types import SimpleNamespace

    from vllm.config import resolve_dtype

    hf_config = SimpleNamespace(dtype=stored)
    assert resolve_dtype(requested, hf_config, frozenset(flags)) == want


def test_cpu_flags_reads_this_machine():
    from vllm import envs
    from vllm.cpu_info import cpu_flags, mask_flags

    flags = cpu_flags()
    with open("/proc/cpuinfo") as f:
        listed = next(line for line in f if line.startswith("flags"))
    host = frozenset(listed.split(":", 1)[1].split())
    assert flags and flags == mask_flags(host, envs.VLLM_CPU_ISA_LEVEL)


SAPPHIRE_RAPIDS = frozenset(
    [
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
        "avx_vnni",
    ]
)


@pytest.mark.parametrize(
    ("level", "kept", "gone"),
    [
        ("avx2", {"avx2", "fma", "f16c"}, {"avx512f", "avx_vnni", "amx_tile"}),
        (
            "avx512",
            {"avx512f", "avx512_vnni"},
            {"avx512_bf16", "avx512_fp16", "amx_bf16"},
        ),
        ("avx512_bf16", {"avx512_bf16", "avx512_fp16"}, {"amx_tile", "amx_int8"}),
        ("native", set(SAPPHIRE_RAPIDS), set()),
    ],
)
def test_isa_level_masks_flags(level, kept, gone):
    from vllm.cpu_info import has_native_bf16, isa_level, mask_flags

    masked = mask_flags(SAPPHIRE_RAPIDS, level)
    assert kept <= masked and not gone & masked and masked <= SAPPHIRE_RAPIDS
    assert isa_level(masked) == level
    assert has_native_bf16(masked) == (level in ("avx512_bf16", "native"))
    # A mask never adds: an AVX2 host stays AVX2 at every level.
    assert isa_level(mask_flags(frozenset({"avx2", "fma"}), level)) == "avx2"


def test_isa_level_refuses_unknown_level():
    from vllm.cpu_info import mask_flags

    with pytest.raises(ValueError, match="VLLM_CPU_ISA_LEVEL"):
        mask_flags(SAPPHIRE_RAPIDS, "avx9000")
