"""The legacy control plane's data path, kept out of the worker.

Rank 0 (the driver, in the engine process) applies each step's delta and builds the
model inputs; ``DriverWorker`` then packs them into one int64 buffer and broadcasts
a fixed-size header and that buffer over torch.distributed, so a step costs two
broadcasts whatever the batch holds. Ranks 1..N-1 run ``follower_loop``, started
through ``collective_rpc``: they receive the inputs and run only the forward pass
(logits are gathered to rank 0, which alone samples).
"""

import torch

from vllm.messages import ExecuteModelRequest, SamplerOutput
from vllm.model_executor.layers.attention import AttentionMetadata, PrefillSeq
from vllm.worker.model_input import ModelInput
from vllm.worker.worker import Worker

_HEADER_LEN = 6
_STOP_HEADER = torch.full((_HEADER_LEN,), -1, dtype=torch.long)


def pack(inp: ModelInput) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (header [6] int64, body [L] int64)."""
    m = inp.meta
    prefill = torch.tensor(
        [
            [p.query_start, p.query_len, p.context_len, len(p.block_table)]
            for p in m.prefills
        ],
        dtype=torch.long,
    ).reshape(-1)
    tables = [p.block_table for p in m.prefills]
    parts = [
        inp.input_ids,
        inp.positions,
        m.slot_mapping,
        m.decode_block_tables.long().reshape(-1),
        m.decode_context_lens.long(),
        prefill,
        *tables,
        inp.logits_rows,
    ]
    width = m.decode_block_tables.shape[1] if m.num_decode_tokens else 0
    header = torch.tensor(
        [
            len(inp.input_ids),
            m.num_decode_tokens,
            width,
            len(m.prefills),
            len(inp.logits_rows),
            sum(len(t) for t in tables),
        ],
        dtype=torch.long,
    )
    return header, torch.cat(parts)


def _body_len(header: torch.Tensor) -> int:
    t, d, w, p, n, tables = header.tolist()
    return 3 * t + d * w + d + 4 * p + tables + n


def unpack(
    header: torch.Tensor,  # [6] int64
    body: torch.Tensor,  # [L] int64
) -> ModelInput:
    t, d, w, p, n, _ = header.tolist()
    head = [t, t, t, d * w, d, 4 * p]
    pieces = body.split([*head, body.numel() - sum(head)])
    input_ids, positions, slots, tables, lens, prefill, rest = pieces
    prefill = prefill.view(p, 4).tolist()
    block_tables = rest[: rest.numel() - n].split([row[3] for row in prefill])
    prefills = [
        PrefillSeq(row[0], row[1], row[2], table)
        for row, table in zip(prefill, block_tables)
    ]
    meta = AttentionMetadata(
        slot_mapping=slots,
        num_decode_tokens=d,
        decode_block_tables=tables.view(d, w).int(),
        decode_context_lens=lens.int(),
        prefills=prefills,
    )
    return ModelInput(input_ids, positions, meta, rest[rest.numel() - n :])


class DriverWorker:
    """Rank 0's worker as the legacy executor drives it."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.bytes_sent = 0  # broadcast step inputs, for the control-plane benchmark

    def execute_model(self, req: ExecuteModelRequest) -> SamplerOutput:
        runner = self.worker.model_runner
        inp = runner.prepare_inputs(req)
        if inp is None:  # nothing to run: the followers are not woken
            return SamplerOutput(req_ids=[], sampled_token_ids=[], logprobs=[])
        header, body = pack(inp)
        self.worker.tp.broadcast(header)
        self.worker.tp.broadcast(body)
        self.bytes_sent += (header.numel() + body.numel()) * header.element_size()
        return runner.sample(inp, runner.forward(inp, gather_to_all=False))

    def stop_followers(self) -> None:
        """Releases the followers from follower_loop."""
        self.worker.tp.broadcast(_STOP_HEADER.clone())


def follower_loop(worker: Worker) -> None:
    """Ranks 1..N-1: run the driver's broadcast steps until it stops the loop
    (before any control call, and at shutdown)."""
    while True:
        header = torch.empty(_HEADER_LEN, dtype=torch.long)
        worker.tp.broadcast(header)
        if torch.equal(header, _STOP_HEADER):
            return
        body = torch.empty(_body_len(header), dtype=torch.long)
        worker.tp.broadcast(body)
        worker.model_runner.forward(unpack(header, body), gather_to_all=False)
