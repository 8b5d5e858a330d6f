"""One request's state: its tokens, its KV blocks, and how far the cache has caught up."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto


class Status(Enum):
    WAITING = auto()   # queued, or preempted (its cache freed; it is recomputed from its tokens)
    RUNNING = auto()   # fully prefilled: one new token a decode step
    FINISHED = auto()


@dataclass(eq=False)
class Sequence:
    index: int                    # position in the caller's list of prompts
    prompt: list[int]
    budget: int                   # most new tokens
    seed: int                     # its own random stream (sampler.uniform)
    group: int = -1               # requests with the same prompt share one prefill (forks)
    output: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)  # KV block of positions [i*bs, (i+1)*bs)
    num_cached: int = 0           # tokens whose K/V are in the cache
    status: Status = Status.WAITING
    truncated: bool = False       # ended at its budget rather than at EOS

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    def __len__(self) -> int:
        return len(self.prompt) + len(self.output)

    @property
    def remaining(self) -> int:
        return self.budget - len(self.output)
