"""Where one engine step's time goes: a prefill step and a decode step at several
batch sizes, split by torch.profiler into op categories.

    python benchmarks/profile_step.py [--batch-sizes 1,32,256] [--prompt-len 128]
        [--enable-lora --num-loras 4 --max-loras 4]

For each batch size B: B random prompts are added to an idle engine; its first
step (a prefill: as many prompts as --max-num-batched-tokens holds) is profiled;
the engine then steps until every request decodes one token per step, and
--decode-steps decode steps are profiled. Each profiled step is preceded by an
unprofiled step of the same kind, whose wall time is reported too.

Ops are attributed by the model runner's record_function scopes
(vllm::prepare_inputs, vllm::forward, vllm::compute_logits, vllm::sample) and,
inside the forward, by op name (and by the Python frame with --with-stack, which
is how the pure-torch fallbacks of the custom ops are recognised). What is left:
"python in forward" (the forward scope minus its ops) and "engine and rest"
(the step minus the four scopes: scheduler, output processing, worker
bookkeeping). Prints a markdown table (ms per step and % of the profiled wall)
and writes JSON.
"""

import argparse
import dataclasses
import itertools
import statistics
import tempfile
import time
from collections import defaultdict
from typing import Any

import torch
from benchmark_utils import (
    load_benchmark_tokenizer,
    model_limits,
    random_prompts,
    sampleable_token_ids,
    write_json,
    write_random_adapters,
)

from vllm import EngineArgs, LLMEngine, SamplingParams

# (key, label) in table order.
CATEGORIES = (
    ("linear", "linear layers"),
    ("attn_prefill", "attention prefill (SDPA)"),
    ("attn_decode", "attention decode"),
    ("norm_rope_act", "norms / rotary / activation"),
    ("kv_write", "KV write"),
    ("layer_loop", "decoder layers in one call (_C::decode_layers)"),
    ("other_ops", "other ops in forward"),
    ("python_forward", "python in forward"),
    ("logits", "logits (LM head)"),
    ("sampling", "sampling"),
    ("prepare_inputs", "input preparation"),
    ("engine_rest", "engine and rest"),
)
SCOPES = {
    "vllm::prepare_inputs": "prepare_inputs",
    "vllm::compute_logits": "logits",
    "vllm::sample": "sampling",
}
FORWARD = "vllm::forward"
STEP = "profile_step::step"
# Forward-scope ops by name, first match wins.
OP_NAMES = (
    # A decode-only step's whole layer loop: linear, attention, norms and KV
    # write together, its kernels called directly (not one op each).
    ("layer_loop", ("_C::decode_layers",)),
    ("attn_prefill", ("aten::scaled_dot_product_attention",)),
    ("attn_decode", ("_C::paged_attention_decode",)),
    ("kv_write", ("_C::reshape_and_cache",)),
    (
        "norm_rope_act",
        ("_C::rms_norm", "_C::fused_add_rms_norm", "_C::rotary_embedding")
        + ("_C::silu_and_mul",),
    ),
    (
        "linear",
        ("aten::linear", "aten::addmm", "aten::mm", "aten::matmul", "_C::linear"),
    ),
)
# Python functions of the torch fallbacks (vllm/_custom_ops.py) and the layers.
FRAMES = (
    ("attn_decode", ("_torch_paged_attention_decode",)),
    ("attn_prefill", ("_prefill", "_gather")),
    ("kv_write", ("_torch_reshape_and_cache",)),
    (
        "norm_rope_act",
        ("_torch_rms_norm", "_torch_fused_add_rms_norm", "_torch_rotary_embedding")
        + ("_torch_silu_and_mul",),
    ),
)


def classify_op(name: str, stack: list[str]) -> str:
    """Category of a top-level op inside the forward scope."""
    for key, frames in FRAMES:
        if any(line.endswith(f": {fn}") for line in stack for fn in frames):
            return key
    for key, names in OP_NAMES:
        if name in names:
            return key
    return "other_ops"


def _us(ev: Any) -> float:
    return ev.time_range.end - ev.time_range.start


def _walk(ev: Any, scope: str | None, into: dict[str, float], ops: dict) -> None:
    """Adds ``ev``'s time to its category in ``into``, and each top-level op's
    time to ``ops[(category, op name)]``."""
    if ev.name == FORWARD:
        into["forward_wall"] += _us(ev)
        scope = FORWARD
    elif ev.name in SCOPES:
        key = SCOPES[ev.name]
        into[key] += _us(ev)
        into["scopes_wall"] += _us(ev)
        for child in ev.cpu_children:
            ops[key, child.name] += _us(child)
        return
    elif scope == FORWARD:
        key = classify_op(ev.name, list(ev.stack or []))
        into[key] += _us(ev)
        into["forward_ops"] += _us(ev)
        ops[key, ev.name] += _us(ev)
        return
    for child in ev.cpu_children:
        _walk(child, scope, into, ops)


def breakdown(events: Any) -> tuple[list[dict[str, float]], dict]:
    """Per profiled step: microseconds per category (plus the raw sums); and
    microseconds per (category, op name) summed over the steps."""
    steps, ops = [], defaultdict(float)
    for ev in events:
        if ev.name != STEP or ev.cpu_parent is not None:
            continue
        into: dict[str, float] = defaultdict(float)
        into["wall"] = _us(ev)
        _walk(ev, None, into, ops)
        into["python_forward"] = into["forward_wall"] - into["forward_ops"]
        into["engine_rest"] = into["wall"] - into["forward_wall"] - into["scopes_wall"]
        steps.append(into)
    return steps, ops


@dataclasses.dataclass
class StepProfile:
    kind: str  # "prefill" or "decode"
    batch: int  # requests in the engine
    seqs: int  # sequences scheduled in the profiled step
    tokens: int  # tokens computed in the profiled step
    wall_ms: float  # profiled step, mean
    unprofiled_ms: float  # the same kind of step without the profiler, median
    ms: dict[str, float]  # category -> mean ms per profiled step
    top_ops: dict[str, list]  # category -> [(op name, mean ms per step)], top 5


def _computed(engine: LLMEngine) -> dict[str, int]:
    s = engine.scheduler
    return {r.request_id: r.num_computed_tokens for r in [*s.running, *s.waiting]}


def _timed_step(engine: LLMEngine) -> tuple[float, int, int]:
    """(seconds, tokens computed, sequences run) of one engine step."""
    before = _computed(engine)
    start = time.perf_counter()
    with torch.profiler.record_function(STEP):
        engine.step()
    elapsed = time.perf_counter() - start
    done = [n - before.get(rid, 0) for rid, n in _computed(engine).items()]
    return elapsed, sum(done), sum(1 for n in done if n > 0)


def _profiled(engine: LLMEngine, steps: int, with_stack: bool):
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, with_stack=with_stack) as prof:
        runs = [_timed_step(engine) for _ in range(steps)]
    per_step, ops = breakdown(prof.events())
    assert len(per_step) == steps, "record_function steps missing from the trace"
    ms = {
        key: sum(s.get(key, 0.0) for s in per_step) / steps / 1e3
        for key, _ in CATEGORIES
    }
    top: dict[str, list] = defaultdict(list)
    for (key, name), us in sorted(ops.items(), key=lambda kv: -kv[1]):
        if len(top[key]) < 5:
            top[key].append((name, us / steps / 1e3))
    wall = sum(s["wall"] for s in per_step) / steps / 1e3
    return runs, ms, dict(top), wall


def _add(
    engine: LLMEngine,
    prompts: list[list[int]],
    params: SamplingParams,
    loras: list[Any],  # LoRARequests the prompts take in turn; [] for none
):
    ids = []
    for p, lora in zip(prompts, itertools.cycle(loras or [None])):
        ids.append(engine.next_request_id())
        engine.add_request(ids[-1], {"prompt_token_ids": p}, params, lora_request=lora)
    return ids


def _decoding(engine: LLMEngine) -> bool:
    s = engine.scheduler
    return not s.waiting and all(
        r.num_tokens - r.num_computed_tokens == 1 for r in s.running
    )


def profile_batch(
    engine: LLMEngine,
    prompts: list[list[int]],
    others: list[list[int]],  # as many prompts, as long, for the unprofiled prefill
    args: argparse.Namespace,
    loras: list[Any],  # LoRARequests the prompts take in turn; [] for none
) -> list[StepProfile]:
    d = args.decode_steps
    # The first requests decode while later ones still prefill: none may finish
    # before the profiled decode steps are done.
    budget = engine.config.scheduler_config.max_num_batched_tokens
    prefill_steps = -(-len(prompts) * args.prompt_len // budget)
    params = SamplingParams(
        temperature=args.temperature,
        top_p=1.0,
        ignore_eos=True,
        max_tokens=prefill_steps + 2 * d + 4,
    )
    # Unprofiled prefill first (it also warms up this batch's shapes), of other
    # prompts, so that no prefix cache can shorten the profiled one.
    ids = _add(engine, others, params, loras)
    bare_prefill = _timed_step(engine)[0]
    engine.abort_request(ids)
    ids = _add(engine, prompts, params, loras)
    runs, ms, top, wall = _profiled(engine, 1, args.with_stack)
    _, tokens, seqs = runs[0]
    prefill = StepProfile(
        "prefill", len(prompts), seqs, tokens, wall, bare_prefill * 1e3, ms, top
    )
    while not _decoding(engine):
        engine.step()
    bare = [_timed_step(engine)[0] for _ in range(d)]
    runs, ms, top, wall = _profiled(engine, d, args.with_stack)
    if any(seqs != len(prompts) for _, _, seqs in runs):
        raise RuntimeError(f"a decode step did not run all {len(prompts)} requests")
    decode = StepProfile(
        "decode",
        len(prompts),
        runs[0][2],
        runs[0][1],
        wall,
        statistics.median(bare) * 1e3,
        ms,
        top,
    )
    engine.abort_request(ids)
    return [prefill, decode]


def markdown(profiles: list[StepProfile]) -> str:
    head = [f"{p.kind} B={p.batch} ({p.tokens} tok)" for p in profiles]
    lines = [
        "| category | " + " | ".join(head) + " |",
        "| --- |" + " --- |" * len(profiles),
    ]
    for key, label in CATEGORIES:
        cells = [
            f"{p.ms[key]:.1f} ({100 * p.ms[key] / p.wall_ms:.0f}%)" for p in profiles
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(
        "| **wall, profiled** | "
        + " | ".join(f"**{p.wall_ms:.1f}**" for p in profiles)
        + " |"
    )
    lines.append(
        "| wall, no profiler | "
        + " | ".join(f"{p.unprofiled_ms:.1f}" for p in profiles)
        + " |"
    )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    tokenizer = load_benchmark_tokenizer(args)
    vocab_size, _ = model_limits(args)
    allowed = sampleable_token_ids(tokenizer, vocab_size)
    engine = LLMEngine.from_engine_args(EngineArgs.from_cli_args(args))
    adapters = tempfile.TemporaryDirectory(prefix="vllm-profile-lora-")
    try:
        loras = write_random_adapters(args, adapters.name) if args.num_loras else []
        profiles = []
        for b in args.batch_sizes:
            prompts = random_prompts(allowed, 2 * b, args.prompt_len, args.seed + b)
            profiles += profile_batch(engine, prompts[:b], prompts[b:], args, loras)
    finally:
        engine.shutdown()
        adapters.cleanup()
    profiles.sort(key=lambda p: (p.kind != "prefill", p.batch))
    print(markdown(profiles))
    for p in profiles if args.top_ops else ():
        print(f"\nTop ops, {p.kind} B={p.batch} (ms per step):")
        for key, label in CATEGORIES:
            names = ", ".join(f"{n} {ms:.1f}" for n, ms in p.top_ops.get(key, [])[:3])
            if names:
                print(f"  {label}: {names}")
    if args.output_json:
        write_json(
            args.output_json,
            {
                "steps": [dataclasses.asdict(p) for p in profiles],
                "args": vars(args),
            },
        )


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add(
        "--batch-sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 32, 256],
    )
    add("--prompt-len", type=int, default=128)
    add("--decode-steps", type=int, default=3, help="profiled decode steps (mean)")
    add("--temperature", type=float, default=1.0, help="0 means greedy")
    add(
        "--with-stack",
        action="store_true",
        help="record Python frames: needed to attribute the pure-torch fallbacks "
        "(VLLM_USE_CUSTOM_KERNELS=0); adds profiler overhead",
    )
    add("--top-ops", action="store_true", help="also print the top ops per category")
    add(
        "--num-loras",
        type=int,
        default=0,
        help="random LoRA adapters, taken in turn by the prompts (needs "
        "--enable-lora; --max-loras as many for one step to hold them all)",
    )
    add("--output-json", type=str, default="benchmarks/results/profile_step.json")
    parser = EngineArgs.add_cli_args(parser)
    parser.set_defaults(dtype="float32")
    return parser


if __name__ == "__main__":
    _args = make_parser().parse_args()
    if max(_args.batch_sizes) > _args.max_num_seqs:
        raise SystemExit("--max-num-seqs must hold the largest batch size")
    if _args.num_loras and not _args.enable_lora:
        raise SystemExit("--num-loras needs --enable-lora")
    main(_args)
