"""Paged KV memory: fixed-size blocks handed out as requests grow, with reference counts so the k
samples of one prompt share the prompt's full blocks.

Block 0 is never handed out: padded rows of a captured decode batch write their K/V there.
"""

from __future__ import annotations

from collections import deque

from tinyreason.generation.sequence import Sequence


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 2:
            raise ValueError(f"the KV cache needs at least 2 blocks, got {num_blocks}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.free: deque[int] = deque(range(1, num_blocks))
        self.refs = [0] * num_blocks
        self.peak_used = 0

    @property
    def capacity(self) -> int:
        """Blocks requests can hold (all but the scratch block)."""
        return self.num_blocks - 1

    @property
    def used(self) -> int:
        return self.capacity - len(self.free)

    def blocks_for(self, seq: Sequence, num_tokens: int) -> int:
        """New blocks `seq` needs to hold `num_tokens` tokens."""
        return max(0, cdiv(num_tokens, self.block_size) - len(seq.blocks))

    def grow(self, seq: Sequence, num_tokens: int) -> bool:
        """Give `seq` blocks for `num_tokens` tokens; False (and nothing taken) if too few are free."""
        need = self.blocks_for(seq, num_tokens)
        if need > len(self.free):
            return False
        for _ in range(need):
            block = self.free.popleft()
            self.refs[block] = 1
            seq.blocks.append(block)
        self.peak_used = max(self.peak_used, self.used)
        return True

    def release(self, seq: Sequence) -> None:
        for block in seq.blocks:
            self.refs[block] -= 1
            if self.refs[block] == 0:
                self.free.append(block)
        seq.blocks = []
        seq.num_cached = 0

    def can_fork(self, parent: Sequence) -> bool:
        return parent.num_cached % self.block_size == 0 or bool(self.free)

    def fork(self, parent: Sequence, child: Sequence) -> tuple[int, int] | None:
        """Let `child` share the full blocks of `parent`'s cached prompt. A partly filled last block
        is copied instead (the two write different tokens into it): returns (source, copy) for the
        caller to copy on the device, or None. Call only when `can_fork`."""
        n = parent.num_cached
        full, tail = divmod(n, self.block_size)
        child.blocks = list(parent.blocks[:full])
        for block in child.blocks:
            self.refs[block] += 1
        child.num_cached = n
        copy = None
        if tail:
            block = self.free.popleft()
            self.refs[block] = 1
            child.blocks.append(block)
            copy = (parent.blocks[full], block)
        self.peak_used = max(self.peak_used, self.used)
        return copy
