"""The step profiler and the machine-limit helpers on a tiny random Llama: every
category the profiler reports is found where it should be, and the parameter
counts behind MFU and the bandwidth bound match the model's real weights."""

import json
import os
import sys

import pytest
import torch

BENCHMARKS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "benchmarks",
)
sys.path.insert(0, BENCHMARKS)

import benchmark_machine  # noqa: E402
import profile_step  # noqa: E402


def test_matmul_params_count_the_models_linear_weights(tiny_model):
    from transformers import AutoConfig, AutoModelForCausalLM

    for variant in ("llama_gqa", "llama_mha_tied"):
        folder = tiny_model(variant)
        config = AutoConfig.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder)
        layers = sum(
            m.weight.numel()
            for m in model.model.layers.modules()
            if isinstance(m, torch.nn.Linear)
        )
        body, head = benchmark_machine.matmul_params(config)
        assert body == layers
        assert head == model.lm_head.weight.numel()
        assert benchmark_machine.fp32_weight_bytes_per_token(config) == 4 * (
            layers + head
        )
        # 10 prompt and 5 output tokens: the head runs for the 5 sampled ones.
        flops = benchmark_machine.model_flops(config, 10, 5)
        assert flops == 2 * (15 * layers + 5 * head)


def test_rates_are_measured():
    assert benchmark_machine.copy_bandwidth_gbs(1 << 20, min_seconds=0.01) > 0
    assert benchmark_machine.matmul_gflops(8, 16, 32, min_seconds=0.01) > 0
    ok, why = benchmark_machine.bf16_support()
    flags = benchmark_machine.cpu_flags()
    if not any(f in flags for f in benchmark_machine.BF16_FLAGS):
        assert not ok and "has none of" in why


@pytest.fixture(scope="module")
def profile(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("profile") / "profile.json"
    args = profile_step.make_parser().parse_args(
        [
            "--model",
            tiny_model("llama_gqa"),
            "--batch-sizes",
            "1,3",
            "--prompt-len",
            "20",
            "--decode-steps",
            "2",
            "--kv-cache-space",
            "0.05",
            "--top-ops",
            "--output-json",
            str(out),
        ]
    )
    profile_step.main(args)
    return json.loads(out.read_text())["steps"]


def test_profile_finds_every_part_of_the_step(profile):
    kinds = [(s["kind"], s["batch"]) for s in profile]
    assert kinds == [("prefill", 1), ("prefill", 3), ("decode", 1), ("decode", 3)]
    for s in profile:
        ms = s["ms"]
        assert s["tokens"] == (
            20 * s["batch"] if s["kind"] == "prefill" else s["batch"]
        )
        assert s["seqs"] == s["batch"]
        for key in ("norm_rope_act", "logits", "sampling"):
            assert ms[key] > 0, (s["kind"], key)
        assert ms["prepare_inputs"] > 0 and ms["engine_rest"] > 0
        # A decode step runs its layers in one call (_C::decode_layers); a
        # prefill runs them op by op.
        layer_ops = ("linear", "kv_write", "attn_prefill", "attn_decode")
        if s["kind"] == "decode":
            assert ms["layer_loop"] > 0
            assert all(ms[key] == 0 for key in layer_ops), s["kind"]
        else:
            assert ms["layer_loop"] == 0 and ms["attn_decode"] == 0
            assert all(ms[key] > 0 for key in layer_ops[:3]), s["kind"]
            linear_ops = dict(profile_step.OP_NAMES)["linear"]
            assert {name for name, _ in s["top_ops"]["linear"]} <= set(linear_ops)
        assert s["top_ops"]["sampling"] and s["top_ops"]["logits"]
        # The categories partition the profiled step.
        assert sum(ms.values()) == pytest.approx(s["wall_ms"], rel=1e-6)
        assert s["unprofiled_ms"] > 0


def test_torch_fallbacks_are_attributed_by_frame():
    stack = ["vllm/_custom_ops.py(140): _torch_paged_attention_decode"]
    assert profile_step.classify_op("aten::matmul", stack) == "attn_decode"
    assert profile_step.classify_op("aten::matmul", []) == "linear"
    assert profile_step.classify_op("aten::add", []) == "other_ops"


def test_profile_with_lora_adapters(tiny_model, tmp_path):
    """Prompts take two random adapters in turn; every decode step still runs
    the whole batch (max_loras holds both adapters)."""
    out = tmp_path / "profile.json"
    argv = ["--model", tiny_model("llama_gqa"), "--batch-sizes", "4"]
    argv += ["--prompt-len", "12", "--decode-steps", "1", "--kv-cache-space", "0.05"]
    argv += ["--enable-lora", "--num-loras", "2", "--max-loras", "2"]
    argv += ["--max-lora-rank", "8", "--output-json", str(out)]
    profile_step.main(profile_step.make_parser().parse_args(argv))
    steps = json.loads(out.read_text())["steps"]
    assert [(s["kind"], s["seqs"]) for s in steps] == [("prefill", 4), ("decode", 4)]
