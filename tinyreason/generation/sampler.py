"""Next-token sampling with a random stream per request.

Each request has its own seed, and the uniform numbers for the token at position p come from a
counter-based hash of (seed, p, token id). So a request's samples depend on nothing but its own
logits: not on which other requests share the batch, on the slot count, or on a preemption and
recompute (the same position draws the same numbers again).

The draw is the Gumbel-max race: token argmax_i z_i / T - log(-log u_i) is token i with probability
softmax(z / T)_i. Top-p keeps token i when the probability mass strictly above it is <= top_p (the
top token always stays); the race restricted to the kept tokens samples the renormalised nucleus.

Two implementations of the same draw: `sample_reference` (PyTorch, a full sort; runs anywhere, the
CPU tests' reference) and, on CUDA, the Triton kernel of sample_kernel.py, which reads a row's
logits about twice and sorts nothing. Both are capturable in a CUDA graph (temperature and top_p
are tensors).
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


def sample_reference(logits: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor, temperature: torch.Tensor,
                     top_p: torch.Tensor | None) -> torch.Tensor:
    """The draw in plain PyTorch (see the module docstring); top_p None skips the nucleus cut."""
    z = logits.float() / temperature
    key = z - torch.log(-torch.log(uniform(seeds, positions, logits.shape[-1])))
    if top_p is not None:
        probs = torch.softmax(z, dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(dim=-1) - sorted_p  # mass of the tokens sorted before each one
        # mass strictly above: tied tokens (common with bf16 logits) all take their first one's
        first = torch.searchsorted(-sorted_p, -sorted_p)
        above = before.gather(-1, first)
        drop = torch.zeros_like(key, dtype=torch.bool).scatter(-1, order, above > top_p)
        key = key.masked_fill(drop, float("-inf"))
    return key.argmax(dim=-1)


def sample(logits: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor, temperature: torch.Tensor,
           top_p: torch.Tensor | None) -> torch.Tensor:
    """One token per row of `logits` [n, vocab], for the token at `positions` [n] (int64 [n])."""
    if logits.is_cuda:
        from tinyreason.generation import sample_kernel

        return sample_kernel.sample(logits, seeds, positions, temperature, top_p)
    return sample_reference(logits, seeds, positions, temperature, top_p)
