"""The compiled decode layer loop (``_C::decode_layers``) gives bit for bit what
the model's module loop gives on a decode-only step, the step it replaces; with
the kernels off the module loop is pure torch, the reference both stay close to."""

import pytest
import torch

from vllm import EngineArgs
from vllm import _custom_ops as ops
from vllm.distributed.parallel_state import TensorParallelGroup
from vllm.model_executor.layers.attention import AttentionMetadata, PrefillSeq
from vllm.model_executor.model_loader.loader import get_model

pytestmark = pytest.mark.skipif(not ops.HAS_KERNELS, reason="vllm._C is not built")

BLOCK = 16


def build(path: str, dtype: str, layers: range | None = None, kernels: bool = True):
    mc = EngineArgs(model=path, max_model_len=128, dtype=dtype).create_engine_config()
    mc = mc.model_config
    if not kernels:
        from dataclasses import replace

        mc = replace(mc, use_custom_kernels=False)
    return mc, get_model(mc, TensorParallelGroup(), layers).model


def decode_batch(mc, rows: int, layers: int, seed: int = 0):
    """Random positions, block tables and filled KV caches for ``rows``
    sequences decoding one token each."""
    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, 100, (rows,), generator=gen)
    per_seq = -(-128 // BLOCK)
    blocks = torch.randperm(rows * per_seq, generator=gen).view(rows, per_seq)
    positions = lens - 1
    slots = blocks.gather(1, (positions // BLOCK).unsqueeze(1)).squeeze(1)
    shape = (rows * per_seq, mc.num_kv_heads, BLOCK, mc.head_size)
    caches = [
        tuple(torch.randn(shape, generator=gen).to(mc.dtype) for _ in range(2))
        for _ in range(layers)
    ]
    meta = AttentionMetadata(
        slot_mapping=slots * BLOCK + positions % BLOCK,
        num_decode_tokens=rows,
        decode_block_tables=blocks.int(),
        decode_context_lens=lens.int(),
        prefills=[],
    )
    ids = torch.randint(0, mc.vocab_size, (rows,), generator=gen)
    return ids, positions, caches, meta


def run(model, ids, positions, caches, meta, loop: bool, carried=None):
    """The stage's output and its KV caches after the step, from fresh copies."""
    model.decode_loop.enabled = loop
    caches = [(k.clone(), v.clone()) for k, v in caches]
    if carried is not None:
        carried = tuple(t.clone() for t in carried)
    with torch.inference_mode():
        out = model(ids, positions, caches, meta, carried)
    return out, caches


# dtype -> decode batch sizes: at most the kernel's rows, and past them, where
# the loop calls torch's GEMM as ops.linear does ("float16" is fp16 weights
# with fp32 arithmetic; bf16 hands 4+ rows to oneDNN where the CPU has bf16).
CASES = [("float32", 1), ("float32", 5), ("float32", 70), ("bfloat16", 1)]
CASES += [("bfloat16", 6), ("float16", 2), ("float16", 70)]


@pytest.mark.parametrize("dtype, rows", CASES)
def test_loop_equals_the_module_loop_bit_for_bit(tiny_model, dtype, rows):
    mc, model = build(tiny_model("llama_gqa"), dtype)
    batch = decode_batch(mc, rows, mc.num_layers)
    x = torch.empty(rows, mc.hf_config.hidden_size, dtype=mc.dtype)
    assert model.decode_loop.applies(x, batch[3])
    got, got_caches = run(model, *batch, loop=True)
    want, want_caches = run(model, *batch, loop=False)
    assert torch.equal(got, want)
    for (gk, gv), (wk, wv) in zip(got_caches, want_caches, strict=True):
        assert torch.equal(gk, wk) and torch.equal(gv, wv)
    if dtype != "float32":
        return
    # The module loop with kernels off is pure torch: the reference.
    _, reference = build(tiny_model("llama_gqa"), dtype, kernels=False)
    assert not reference.decode_loop.applies(x, batch[3])
    ref, _ = run(reference, *batch, loop=False)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_a_later_pipeline_stage_carries_the_residual(tiny_model):
    path = tiny_model("llama_pp")  # 5 layers; this stage runs 2 and 3
    mc, model = build(path, "float32", range(2, 4))
    ids, positions, caches, meta = decode_batch(mc, 3, 2)
    gen = torch.Generator().manual_seed(1)
    carried = tuple(
        torch.randn(3, mc.hf_config.hidden_size, generator=gen) for _ in "xr"
    )
    got, _ = run(model, ids, positions, caches, meta, True, carried)
    want, _ = run(model, ids, positions, caches, meta, False, carried)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_steps_with_a_prompt_chunk_keep_the_module_loop(tiny_model):
    mc, model = build(tiny_model("llama_gqa"), "float32")
    *_, meta = decode_batch(mc, 2, mc.num_layers)
    x = torch.empty(6, mc.hf_config.hidden_size)
    meta.prefills = [PrefillSeq(2, 4, 4, torch.zeros(1, dtype=torch.long))]
    assert not model.decode_loop.applies(x, meta)
