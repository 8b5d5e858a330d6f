"""Triton sampler: sampler.sample_reference's draw without a sort, one program per row.

Pass 1 walks the row once: the Gumbel race over every token (the counter hash computed in
registers, never stored) and, for top-p, an online max and softmax denominator. With top-p, pass 2
sums the probability mass strictly above the winner; if it is <= top_p the winner is in the
nucleus (most rows: the race lands outside it with probability <= 1 - top_p). Otherwise every token
at or below the winner's probability is outside too, so the race is rerun over the tokens above it
and checked again. The tokens are those of sample_reference for the same uniforms: the nucleus is
a prefix of the tokens by probability, and the race's winner in it is the first race winner that
falls inside it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_NEG_INF = float("-inf")


@triton.jit
def _gumbel(base, idx):
    """-log(-log u) for sampler.uniform's u of tokens idx; base = seed * GOLDEN ^ position * MIX1."""
    x = base + idx.to(tl.uint64) * 0x9E3779B97F4A7C15
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB
    x = x ^ (x >> 31)
    u = ((x >> 40).to(tl.float32) + 0.5) * (1.0 / 16777216.0)
    return -tl.log(-tl.log(u))


@triton.jit
def _race(row, base, t, pivot, V: tl.constexpr, BLOCK: tl.constexpr):
    """argmax over tokens with z > pivot of z + gumbel (z = logit / t)."""
    offs = tl.arange(0, BLOCK)
    best_key = tl.full([], -float("inf"), tl.float32)  # loop-carried: typed tensors from the start
    best_idx = tl.full([], 0, tl.int32)
    for start in range(0, V, BLOCK):
        idx = start + offs
        z = tl.load(row + idx, mask=idx < V, other=-float("inf")).to(tl.float32) / t
        key = tl.where(z > pivot, z + _gumbel(base, idx), -float("inf"))
        k_max = tl.max(key, 0)
        better = k_max > best_key
        best_idx = tl.where(better, tl.argmax(key, 0) + start, best_idx)
        best_key = tl.where(better, k_max, best_key)
    return best_idx


@triton.jit
def _mass_above(row, z_w, m, t, V: tl.constexpr, BLOCK: tl.constexpr):
    """sum over tokens with z > z_w of exp(z - m)."""
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, V, BLOCK):
        idx = start + offs
        z = tl.load(row + idx, mask=idx < V, other=-float("inf")).to(tl.float32) / t
        acc += tl.where(z > z_w, tl.exp(z - m), 0.0)
    return tl.sum(acc, 0)


@triton.jit
def _sample(LOGITS, stride, SEEDS, POS, TEMP, TOP_P, OUT, V: tl.constexpr, BLOCK: tl.constexpr,
            NUCLEUS: tl.constexpr):
    r = tl.program_id(0)
    row = LOGITS + r.to(tl.int64) * stride
    seed = tl.load(SEEDS + r).to(tl.uint64, bitcast=True)
    pos = tl.load(POS + r).to(tl.uint64, bitcast=True)
    base = (seed * 0x9E3779B97F4A7C15) ^ (pos * 0xBF58476D1CE4E5B9)
    t = tl.load(TEMP)
    offs = tl.arange(0, BLOCK)
    # pass 1: the race over every token, and (top-p) per-lane running max / denominator
    best_key = tl.full([], -float("inf"), tl.float32)  # loop-carried: typed tensors from the start
    best_idx = tl.full([], 0, tl.int32)
    m_vec = tl.full([BLOCK], -float("inf"), tl.float32)
    s_vec = tl.zeros([BLOCK], tl.float32)
    for start in range(0, V, BLOCK):
        idx = start + offs
        z = tl.load(row + idx, mask=idx < V, other=-float("inf")).to(tl.float32) / t
        if NUCLEUS:
            m_new = tl.maximum(m_vec, z)
            live = m_new > -float("inf")  # lanes past the vocabulary stay at -inf (no inf - inf)
            alpha = tl.exp(tl.where(live, m_vec - m_new, 0.0))
            s_vec = tl.where(live, s_vec * alpha + tl.exp(tl.where(live, z - m_new, 0.0)), 0.0)
            m_vec = m_new
        key = z + _gumbel(base, idx)
        k_max = tl.max(key, 0)
        better = k_max > best_key
        best_idx = tl.where(better, tl.argmax(key, 0) + start, best_idx)
        best_key = tl.where(better, k_max, best_key)
    if NUCLEUS:
        top_p = tl.load(TOP_P)
        m = tl.max(m_vec, 0)
        s = tl.sum(s_vec * tl.exp(m_vec - m), 0)
        z_w = tl.load(row + best_idx).to(tl.float32) / t
        mass = _mass_above(row, z_w, m, t, V, BLOCK) / s
        while mass > top_p:  # the winner is outside the nucleus, and so is every token not above it
            best_idx = _race(row, base, t, z_w, V, BLOCK)
            z_w = tl.load(row + best_idx).to(tl.float32) / t
            mass = _mass_above(row, z_w, m, t, V, BLOCK) / s
    tl.store(OUT + r, best_idx.to(tl.int64))


def sample(logits: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor, temperature: torch.Tensor,
           top_p: torch.Tensor | None) -> torch.Tensor:
    """sampler.sample_reference's tokens; logits [n, vocab] (any float dtype, unit last stride)."""
    n, vocab = logits.shape
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    out = torch.empty(n, dtype=torch.int64, device=logits.device)
    block = min(4096, triton.next_power_of_2(vocab))
    temperature = temperature.to(torch.float32)
    nucleus = top_p is not None
    _sample[(n,)](logits, logits.stride(0), seeds, positions, temperature,
                  top_p.to(torch.float32) if nucleus else temperature, out, V=vocab, BLOCK=block,
                  NUCLEUS=nucleus, num_warps=8)
    return out
