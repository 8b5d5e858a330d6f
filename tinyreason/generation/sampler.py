"""Next-token sampling with a random stream per request.

Each request has its own seed, and the uniform numbers for the token at position p come from a
counter-based hash of (seed, p, token id). So a request's samples depend on nothing but its own
logits: not on which other requests share the batch, on the slot count, or on a preemption and
recompute (the same position draws the same numbers again). Pure tensor ops, so the step can live
inside a CUDA graph.
"""

from __future__ import annotations

import torch

# splitmix64 constants, as signed int64 (torch has no uint64 arithmetic)
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def uniform(seeds: torch.Tensor, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """[n, vocab] float32 uniforms in (0, 1): splitmix64 of (seed, position, token id)."""
    token = torch.arange(vocab, device=seeds.device, dtype=torch.int64)
    x = ((seeds[:, None] * _GOLDEN) ^ (positions[:, None] * _MIX1)) + token * _GOLDEN
    x = (x ^ _shr(x, 30)) * _MIX1
    x = (x ^ _shr(x, 27)) * _MIX2
    x = x ^ _shr(x, 31)
    return (_shr(x, 40).float() + 0.5) * (1.0 / (1 << 24))


def sample(logits: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor, temperature: torch.Tensor,
           top_p: torch.Tensor | None) -> torch.Tensor:
    """One token per row of `logits` [n, vocab], for the token at `positions` [n].

    temperature (> 0) and top_p are 0-d tensors, so one captured graph serves any values; top_p None
    skips the nucleus cut (and its sort). The draw is the exponential race: argmax p_i / E_i with
    E_i = -log u_i picks token i with probability p_i (the top-p renormalisation is implicit).
    """
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p is not None:
        sorted_p, sorted_i = probs.sort(dim=-1, descending=True)
        drop = (sorted_p.cumsum(dim=-1) - sorted_p) > top_p  # the top token always stays
        probs = probs.scatter(-1, sorted_i, sorted_p.masked_fill(drop, 0.0))
    race = -torch.log(uniform(seeds, positions, logits.shape[-1]))
    return (probs / race).argmax(dim=-1)
