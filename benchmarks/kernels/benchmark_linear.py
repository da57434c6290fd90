"""Times the few-row linear kernel (torch.ops._C.linear) against F.linear.

    python benchmarks/kernels/benchmark_linear.py --rows 1,4,16,32,128,256

Shapes default to SmolLM2-135M's matmuls, N x K of the weight: the fused QKV
(960x576), o_proj (576x576), fused gate/up (3072x576), down (576x1536) and the
LM head (49152x576). Each call cycles through enough weight copies to exceed
--cycle-mib, so the weights come from memory as in a decode step (one
layer's weights fit in the L3 cache; 30 layers' do not). GB/s is weight bytes
over the call's time. Threads follow torch.get_num_threads().
"""

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from vllm import _custom_ops as ops

SMOLLM2_SHAPES = "960x576,576x576,3072x576,576x1536,49152x576"
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def time_call(
    fn: Callable[[torch.Tensor], object], weights: list, secs: float
) -> float:
    """Median seconds per call over 5 rounds of about secs / 5 each."""
    fn(weights[0])  # warm-up: thread pool start, first-touch allocations
    start = time.perf_counter()
    fn(weights[1 % len(weights)])
    per_call = max(time.perf_counter() - start, 1e-6)
    iters = max(len(weights), int(secs / 5 / per_call))
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for i in range(iters):
            fn(weights[i % len(weights)])
        rounds.append((time.perf_counter() - start) / iters)
    return sorted(rounds)[2]


def compare(x: torch.Tensor, weights: list, secs: float) -> tuple[float, float]:
    """Seconds per call of the kernel and of F.linear on x [M, K] (16-bit weights
    under fp32 x: F.linear on the widened weights, ops.linear's fallback)."""
    out = torch.empty(x.shape[0], weights[0].shape[0], dtype=x.dtype)
    kern = time_call(lambda w: torch.ops._C.linear(out, x, w, None), weights, secs)
    return kern, time_call(lambda w: F.linear(x, w.to(x.dtype)), weights, secs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=SMOLLM2_SHAPES, help="NxK,NxK,...")
    p.add_argument("--rows", default="1,4,16", help="M values, comma-separated")
    p.add_argument("--cycle-mib", type=int, default=256)
    p.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32", help="x")
    p.add_argument(
        "--weight-dtype",
        choices=["same", "float16", "bfloat16"],
        default="same",
        help="16-bit weights under fp32 x: --dtype float16's layers on CPU",
    )
    args = p.parse_args()
    if not ops.HAS_KERNELS:
        raise SystemExit("vllm._C is not built: nothing to compare")
    torch.manual_seed(0)
    xdtype = DTYPES[args.dtype]
    wdtype = xdtype if args.weight_dtype == "same" else DTYPES[args.weight_dtype]
    print(
        f"threads={torch.get_num_threads()}; x {xdtype}, weights {wdtype}; "
        "ms per call (weight GB/s)"
    )
    print("| N x K | M | kernel | F.linear | speedup |")
    print("| --- | --- | --- | --- | --- |")
    for shape in args.shapes.split(","):
        n, k = (int(v) for v in shape.split("x"))
        nbytes = n * k * wdtype.itemsize
        copies = max(2, (args.cycle_mib << 20) // nbytes)
        weights = [torch.randn(n, k).to(wdtype) for _ in range(copies)]
        for m in (int(v) for v in args.rows.split(",")):
            kern, ref = compare(torch.randn(m, k).to(xdtype), weights, args.seconds)
            print(
                f"| {n}x{k} | {m} | {kern * 1e3:.3f} ({nbytes / kern / 1e9:.1f}) "
                f"| {ref * 1e3:.3f} ({nbytes / ref / 1e9:.1f}) | {ref / kern:.2f}x |"
            )
        del weights


if __name__ == "__main__":
    main()
