"""Which requests run next: admission by free KV blocks, chunked prefill, and preemption.

A step is either a prefill (new or preempted requests, at most `prefill_tokens` tokens, a long
prompt spread over several steps) or `k` decode steps for every running request. Admission keeps
one free block per running request in reserve, so running requests are rarely cut short; when the
blocks still run out, the newest running request is preempted: its cache is freed and it waits at
the front of the queue to be recomputed from its tokens (prompt + what it generated so far).
"""

from __future__ import annotations

from collections import deque

from tinyreason.generation.block_manager import BlockManager, cdiv
from tinyreason.generation.sequence import Sequence, Status


class Scheduler:
    def __init__(self, blocks: BlockManager, max_seqs: int, prefill_tokens: int):
        self.blocks = blocks
        self.max_seqs = max_seqs
        self.prefill_tokens = prefill_tokens
        # refill only once this many requests fit (or the queue is that short): each prefill
        # stalls every running request for a step
        self.min_refill = max(1, max_seqs // 8)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.followers: dict[int, list[Sequence]] = {}  # leader index -> same-prompt requests to fork
        self.preemptions = 0

    def add(self, seq: Sequence, followers: list[Sequence] = ()) -> None:
        need = cdiv(len(seq.prompt) + seq.budget, self.blocks.block_size)
        if need > self.blocks.capacity:
            raise ValueError(f"a request of {len(seq.prompt)} prompt + {seq.budget} new tokens needs {need} KV "
                             f"blocks; the cache has {self.blocks.capacity} (fix: fewer new tokens, or more "
                             f"GPU memory for the cache)")
        self.waiting.append(seq)
        if followers:
            self.followers[seq.index] = list(followers)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- prefill -------------------------------------------------------------------------------------
    def schedule_prefill(self) -> list[tuple[Sequence, int]]:
        """(request, tokens to prefill now) for this step, blocks taken; [] when decoding is better."""
        if not self.waiting:
            return []
        group = lambda s: 1 + len(self.followers.get(s.index, ()))  # noqa: E731
        free_slots = self.max_seqs - len(self.running)
        head = self.waiting[0]
        partial = head.num_cached > 0  # a long prompt already part way in: finish it first
        if self.running and not partial and free_slots < min(self.min_refill, sum(map(group, self.waiting))):
            return []
        chunks, budget, slots = [], self.prefill_tokens, free_slots
        reserve = len(self.running)
        for seq in self.waiting:
            todo = len(seq) - seq.num_cached
            take = min(todo, budget)
            if take <= 0 or (chunks and group(seq) > slots) or slots <= 0:
                break
            if self.blocks.blocks_for(seq, seq.num_cached + take) + reserve > len(self.blocks.free):
                break
            self.blocks.grow(seq, seq.num_cached + take)
            chunks.append((seq, take))
            budget -= take
            slots -= group(seq)
            if take < todo:
                break
        return chunks

    def prefilled(self, seq: Sequence) -> None:
        """`seq`'s cache holds all its tokens: it decodes from now on."""
        self.waiting.remove(seq)
        seq.status = Status.RUNNING
        self.running.append(seq)

    def take_followers(self, leader: Sequence) -> tuple[list[Sequence], list[Sequence]]:
        """The leader's same-prompt requests split into those forked from it now (slots and a block
        for each are free) and those queued to prefill on their own."""
        rest = self.followers.pop(leader.index, [])
        forked = []
        while rest and len(self.running) + len(forked) < self.max_seqs and self.blocks.can_fork(leader):
            forked.append(rest.pop(0))
        for seq in reversed(rest):
            self.waiting.appendleft(seq)
        return forked, rest

    # -- decode --------------------------------------------------------------------------------------
    def reserve_decode(self, steps: int) -> int:
        """Blocks for `steps` more tokens of every running request, preempting the newest requests
        while too few are free (after first trying a single step). Returns the steps granted."""
        while True:
            need = sum(self.blocks.blocks_for(s, self._reach(s, steps)) for s in self.running)
            if need <= len(self.blocks.free):
                break
            if steps > 1:
                steps = 1
                continue
            self.preempt(self.running[-1])
        for seq in self.running:
            self.blocks.grow(seq, self._reach(seq, steps))
        return steps

    @staticmethod
    def _reach(seq: Sequence, steps: int) -> int:
        """Tokens cached after `steps` decode steps (a request never writes past its budget)."""
        return min(len(seq) + steps - 1, len(seq.prompt) + seq.budget)

    def preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.release(seq)
        seq.status = Status.WAITING
        # behind a part-prefilled head, which holds blocks and must finish first
        at = 1 if self.waiting and self.waiting[0].num_cached > 0 else 0
        self.waiting.insert(at, seq)
        self.preemptions += 1

    def finish(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.release(seq)
        seq.status = Status.FINISHED
