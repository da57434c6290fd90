"""Times the sampling kernel (torch.ops._C.sample_from_logits) against its
pure-torch reference (softmax, fp64 cumsum, searchsorted).

    python benchmarks/kernels/benchmark_sampler.py --rows 1,32,64,256

Rows of random logits over a SmolLM2-sized vocabulary (49152) at temperature 0.8;
both draw the same tokens (checked here too). Threads follow
torch.get_num_threads().
"""

import argparse
import functools
import time

import torch

from vllm import _custom_ops as ops


def ms_per_call(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1,32,64,256", help="rows per call")
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--repeats", type=int, default=9, help="median of this many")
    args = p.parse_args()
    if not ops.HAS_KERNELS:
        raise SystemExit("vllm._C is not built: nothing to compare")
    torch.manual_seed(0)
    print(f"threads={torch.get_num_threads()}, vocab {args.vocab}; ms per call")
    print("| rows | kernel | torch | speedup |")
    print("| --- | --- | --- | --- |")
    for rows in (int(v) for v in args.rows.split(",")):
        logits = torch.randn(rows, args.vocab) * 3
        temperature = torch.full((rows,), 0.8)
        points = torch.rand(rows, dtype=torch.float64).clamp_(min=2.0**-53)
        got = {}
        times = {}
        for kernels in (True, False):
            tokens = torch.empty(rows, dtype=torch.long)
            call = functools.partial(
                ops.sample_from_logits, tokens, logits, temperature, points, kernels
            )
            times[kernels] = ms_per_call(call, args.repeats)
            got[kernels] = tokens.tolist()
        same = "" if got[True] == got[False] else " (tokens differ!)"
        print(
            f"| {rows} | {times[True]:.3f} | {times[False]:.3f} "
            f"| {times[False] / times[True]:.1f}x{same} |"
        )


if __name__ == "__main__":
    main()
