"""Times decode paged attention: the vllm._C kernel against the torch path.

    python benchmarks/kernels/benchmark_paged_attention.py \
        --num-query-heads 32 --num-kv-heads 8 --head-size 128

Every sequence has --context-len cached tokens spread over shuffled blocks.
Threads follow torch.get_num_threads() (set OMP_NUM_THREADS to change them).
"""

import argparse
import math
import time
from collections.abc import Callable

import torch

from vllm import _custom_ops as ops


def make_inputs(args: argparse.Namespace) -> tuple:
    blocks_per_seq = math.ceil(args.context_len / args.block_size)
    num_blocks = args.batch_size * blocks_per_seq
    block_tables = torch.randperm(num_blocks, dtype=torch.int32).view(
        args.batch_size, blocks_per_seq
    )
    shape = (num_blocks, args.num_kv_heads, args.block_size, args.head_size)
    key_cache = torch.randn(shape)
    value_cache = torch.randn(shape)
    query = torch.randn(args.batch_size, args.num_query_heads, args.head_size)
    context_lens = torch.full((args.batch_size,), args.context_len, dtype=torch.int32)
    return query, key_cache, value_cache, block_tables, context_lens


def time_ms(fn: Callable[[], None], iters: int) -> float:
    fn()  # warm-up: first-touch allocations, thread pool start
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--context-len", type=int, default=1024)
    p.add_argument("--num-query-heads", type=int, default=9)
    p.add_argument("--num-kv-heads", type=int, default=3)
    p.add_argument("--head-size", type=int, default=64)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--iters", type=int, default=20)
    args = p.parse_args()
    torch.manual_seed(0)
    query, kc, vc, tables, lens = make_inputs(args)
    out = torch.empty_like(query)
    scale = args.head_size**-0.5
    call = (out, query, kc, vc, tables, lens, scale)
    cache_mb = 2 * kc.numel() * kc.element_size() / 2**20
    print(
        f"batch={args.batch_size} context={args.context_len} "
        f"heads={args.num_query_heads}/{args.num_kv_heads} head_size={args.head_size} "
        f"block_size={args.block_size} threads={torch.get_num_threads()} "
        f"kv_cache={cache_mb:.0f} MiB"
    )
    torch_ms = time_ms(lambda: ops._torch_paged_attention_decode(*call), args.iters)
    print(f"torch path : {torch_ms:8.2f} ms")
    if not ops.HAS_KERNELS:
        print("vllm._C is not built: no kernel timing")
        return
    kernel_ms = time_ms(lambda: torch.ops._C.paged_attention_decode(*call), args.iters)
    print(f"_C kernel  : {kernel_ms:8.2f} ms  ({cache_mb / kernel_ms:.1f} GB/s of KV)")
    print(f"speedup    : {torch_ms / kernel_ms:8.2f}x")
    want = torch.empty_like(out)
    ops._torch_paged_attention_decode(want, *call[1:])
    print(f"max |kernel - torch| = {(out - want).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
