"""The tensors one forward pass needs, and their packing into one int64 buffer.

The legacy control plane broadcasts this from the driver worker to the other ranks
each step: a fixed-size header, then one buffer, so a step costs two broadcasts
whatever the batch holds.
"""

from dataclasses import dataclass, field

import torch

from vllm.model_executor.layers.attention import AttentionMetadata, PrefillSeq
from vllm.worker.request_state import CachedRequestState

_HEADER_LEN = 6


@dataclass
class ModelInput:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    meta: AttentionMetadata
    # Batch rows whose logits are computed: first the last row of every request
    # that samples, then the rows of prompt chunks that want prompt logprobs.
    logits_rows: torch.Tensor  # [N] int64
    # Driver-side only (never broadcast): who samples, and prompt-logprob spans as
    # (request, first index into logits_rows, count, index of the first prompt
    # token they predict).
    sample_states: list[CachedRequestState] = field(default_factory=list)
    prompt_logprob_spans: list[tuple[CachedRequestState, int, int, int]] = field(
        default_factory=list
    )

    def pack(self) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (header [6] int64, body [L] int64)."""
        m = self.meta
        prefill = torch.tensor(
            [
                [p.query_start, p.query_len, p.context_len, len(p.block_table)]
                for p in m.prefills
            ],
            dtype=torch.long,
        ).reshape(-1)
        tables = [p.block_table for p in m.prefills]
        parts = [
            self.input_ids,
            self.positions,
            m.slot_mapping,
            m.decode_block_tables.long().reshape(-1),
            m.decode_context_lens.long(),
            prefill,
            *tables,
            self.logits_rows,
        ]
        width = m.decode_block_tables.shape[1] if m.num_decode_tokens else 0
        header = torch.tensor(
            [
                len(self.input_ids),
                m.num_decode_tokens,
                width,
                len(m.prefills),
                len(self.logits_rows),
                sum(len(t) for t in tables),
            ],
            dtype=torch.long,
        )
        return header, torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)

    @staticmethod
    def body_len(header: torch.Tensor) -> int:
        t, d, w, p, n, tables = header.tolist()
        return 3 * t + d * w + d + 4 * p + tables + n

    @staticmethod
    def unpack(header: torch.Tensor, body: torch.Tensor) -> "ModelInput":
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


def header_template() -> torch.Tensor:
    return torch.empty(_HEADER_LEN, dtype=torch.long)


STOP_HEADER = torch.full((_HEADER_LEN,), -1, dtype=torch.long)
