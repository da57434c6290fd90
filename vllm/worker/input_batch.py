"""The persistent batch: every request a worker holds is a row of preallocated
tensors that each step's delta updates in place.

A decode step then builds its inputs with a few tensor gathers over these rows
(token at each row's position, slot from its block table) instead of Python
lists, and the sampler reads each row's parameters as tensor columns. A request
gets a row when it arrives (or resumes); a finished one's row is filled with
the last row, so rows stay dense.

The Python lists in CachedRequestState stay the source of truth for prompt
chunks and prompt logprobs; the rows mirror them (the tokens, including the one
this worker sampled last, and the block table), so either path sees the same
request.
"""

import torch

from vllm.model_executor.layers.sampling_tensors import (
    DTYPES,
    SamplingTensors,
    option_values,
)
from vllm.worker.request_state import CachedRequestState

_COLUMNS = [name for name in DTYPES if name != "output_index"]


class InputBatch:
    def __init__(self, max_rows: int, max_model_len: int, block_size: int):
        self.block_size = block_size
        self.max_blocks = -(-max_model_len // block_size)
        self.states: list[CachedRequestState] = []  # row -> request
        self.row_of: dict[str, int] = {}
        self.num_blocks = [0] * max_rows
        self.token_ids = torch.zeros(max_rows, 256, dtype=torch.long)  # widens
        self.num_tokens = torch.zeros(max_rows, dtype=torch.long)  # known tokens
        self.num_prompt = torch.zeros(max_rows, dtype=torch.long)
        self.num_computed = torch.zeros(max_rows, dtype=torch.long)  # KV in cache
        self.block_table = torch.zeros(max_rows, self.max_blocks, dtype=torch.int32)
        self.sampling = {c: torch.zeros(max_rows, dtype=DTYPES[c]) for c in _COLUMNS}

    def _fit(self, rows: int, width: int) -> None:
        """Grows (doubling) to hold rows x width tokens, keeping the contents:
        more requests than max_num_seqs held at once (a step's new ones arrive
        before a later step's finished ones leave), or a longer request than any
        so far (token columns start narrow rather than at max_model_len)."""
        have_rows, have_width = self.token_ids.shape
        if rows <= have_rows and width <= have_width:
            return
        rows = have_rows if rows <= have_rows else max(rows, 2 * have_rows)
        width = have_width if width <= have_width else max(width, 2 * have_width)
        # Plain tensors even when called under inference_mode (a step's
        # sampling grows the batch there): the legacy driver updates them
        # outside it, which an inference tensor would refuse.
        with torch.inference_mode(False):
            self._grow(rows, width)

    def _grow(self, rows: int, width: int) -> None:
        n = len(self.states)
        tokens = torch.zeros(rows, width, dtype=torch.long)
        tokens[:n, : self.token_ids.shape[1]] = self.token_ids[:n]
        self.token_ids = tokens
        for name in ("num_tokens", "num_prompt", "num_computed", "block_table"):
            old = getattr(self, name)
            new = old.new_zeros((rows, *old.shape[1:]))
            new[:n] = old[:n]
            setattr(self, name, new)
        for c, col in self.sampling.items():
            self.sampling[c] = torch.cat([col[:n], col.new_zeros(rows - n)])
        self.num_blocks = self.num_blocks[:n] + [0] * (rows - n)

    def add(self, state: CachedRequestState) -> None:
        if state.req_id in self.row_of:
            self.remove(state.req_id)
        row, n = len(self.states), len(state.token_ids)
        self._fit(row + 1, n + 1)
        self.states.append(state)
        self.row_of[state.req_id] = row
        self.token_ids[row, :n] = torch.tensor(state.token_ids, dtype=torch.long)
        self.num_tokens[row] = n
        self.num_prompt[row] = state.num_prompt_tokens
        self.num_computed[row] = state.num_computed_tokens
        self.num_blocks[row] = 0
        self.append_blocks(row, state.block_ids)
        for name, value in option_values(state.sampling).items():
            self.sampling[name][row] = value

    def remove(self, req_id: str) -> None:
        """Moves the last row into the freed one."""
        row = self.row_of.pop(req_id, None)
        if row is None:
            return
        last = len(self.states) - 1
        moved = self.states.pop()
        if row != last:
            self.states[row] = moved
            self.row_of[moved.req_id] = row
            width = int(self.num_tokens[last])
            self.token_ids[row, :width] = self.token_ids[last, :width]
            for t in (self.num_tokens, self.num_prompt, self.num_computed):
                t[row] = t[last]
            blocks = self.num_blocks[last]
            self.block_table[row, :blocks] = self.block_table[last, :blocks]
            self.num_blocks[row] = blocks
            for col in self.sampling.values():
                col[row] = col[last]

    def append_blocks(self, row: int, block_ids: list[int]) -> None:
        if block_ids:
            first = self.num_blocks[row]
            end = first + len(block_ids)
            self.block_table[row, first:end] = torch.tensor(
                block_ids, dtype=torch.int32
            )
            self.num_blocks[row] = end

    def rows(self, states: list[CachedRequestState]) -> torch.Tensor:  # -> [N] int64
        return torch.tensor([self.row_of[s.req_id] for s in states], dtype=torch.long)

    def decode_inputs(
        self, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows computing one token each ([D] int64) -> (input ids [D], positions
        [D], slot mapping [D], block tables [D, blocks used])."""
        bs = self.block_size
        positions = self.num_computed[rows]
        ids = self.token_ids[rows, positions]
        table = self.block_table[rows]
        blocks = positions // bs
        slots = (
            table.gather(1, blocks.unsqueeze(1)).squeeze(1).long() * bs + positions % bs
        )
        width = int(blocks.max()) + 1 if len(rows) else 0
        return ids, positions, slots, table[:, :width]

    def record_sampled(
        self,
        rows: torch.Tensor,  # [N] int64
        tokens: list[int],
    ) -> None:
        """Appends each row's sampled token (the worker's own: with async
        scheduling the engine may not have seen it yet)."""
        ends = self.num_tokens[rows]
        if len(rows):
            self._fit(len(self.states), int(ends.max()) + 1)
        self.token_ids[rows, ends] = torch.tensor(tokens, dtype=torch.long)
        self.num_tokens[rows] = ends + 1

    def sampling_tensors(self, rows: torch.Tensor) -> SamplingTensors:  # [N] int64
        output_index = self.num_tokens[rows] - self.num_prompt[rows]
        return SamplingTensors(
            **{name: col[rows] for name, col in self.sampling.items()},
            output_index=output_index,
        )
