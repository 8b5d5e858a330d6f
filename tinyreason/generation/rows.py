"""Decode rows: which running request sits in which row of the model runner's static decode inputs.

A request keeps its row while it runs (CUDA graphs read rows [0, n)); the host keeps the block
table and uploads it, plus the new rows' first token, position, seed and last writable position.
"""

from __future__ import annotations

import torch

from tinyreason.generation.sequence import Sequence


class DecodeRows:
    def __init__(self, max_rows: int, max_blocks: int):
        self.row_of: dict[int, int] = {}    # request index -> its row
        self.in_table: dict[int, int] = {}  # request index -> how many of its blocks its row holds
        self.free = list(range(max_rows - 1, -1, -1))
        self.table = torch.zeros(max_rows, max_blocks, dtype=torch.int32)
        self.new: list[tuple] = []          # (row, token, position, seed, last position) to upload

    def __len__(self) -> int:
        """Rows a decode step must cover: up to the highest row in use."""
        return max(self.row_of.values()) + 1

    def assign(self, seq: Sequence, first: int) -> None:
        """`seq` (prefilled, its first new token `first` sampled) takes a row."""
        row = self.free.pop()
        self.row_of[seq.index] = row
        self.table[row, :len(seq.blocks)] = torch.tensor(seq.blocks, dtype=torch.int32)
        self.in_table[seq.index] = len(seq.blocks)
        self.new.append((row, first, len(seq) - 1, seq.seed, len(seq.prompt) + seq.budget - 1))

    def release(self, index: int) -> None:
        row = self.row_of.pop(index, None)
        if row is not None:
            self.table[row].zero_()
            self.free.append(row)

    def add_blocks(self, seqs: list[Sequence]) -> None:
        """Only the blocks the scheduler just added (the rest are in place)."""
        for seq in seqs:
            row, have = self.row_of[seq.index], self.in_table[seq.index]
            if len(seq.blocks) > have:
                self.table[row, have:len(seq.blocks)] = torch.tensor(seq.blocks[have:], dtype=torch.int32)
                self.in_table[seq.index] = len(seq.blocks)

    def upload(self, runner) -> None:
        """Host state -> the runner's static decode inputs. Free rows restart at position 0 (their
        steps write the scratch block), so an idle row never walks past its block table."""
        runner.block_table.copy_(self.table.to(runner.device, non_blocking=True))
        if self.free:
            runner.pos.index_fill_(0, torch.tensor(self.free, dtype=torch.long).to(runner.device), 0)
        if self.new:
            rows, *values = (torch.tensor(c, dtype=torch.long).to(runner.device) for c in zip(*self.new))
            for buf, value in zip((runner.tok, runner.pos, runner.seeds, runner.limit), values):
                buf.index_copy_(0, rows, value)
            self.new.clear()
