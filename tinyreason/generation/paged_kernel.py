"""Triton paged-attention decode: one query token per request against its KV blocks.

A program owns (request, KV head, split): it loads the group of query heads that share the KV
head as one [group, head_dim] tile, walks its share of the request's blocks with an online
softmax, and writes either the final output (one split) or a partial output and log-sum-exp that
`_combine` merges. Reads each cached K/V byte once per step: the memory-bandwidth floor's shape.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_LOG2E = 1.4426950408889634


@triton.jit
def _decode(Q, K, V, BT, LENS, O, OP, LSEP, qk_scale, bt_stride,
            H: tl.constexpr, HKV: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr,
            BS: tl.constexpr, MIN_PAGES: tl.constexpr, SPLITS: tl.constexpr):
    b = tl.program_id(0)
    kh = tl.program_id(1)
    sp = tl.program_id(2)
    length = tl.load(LENS + b)
    n_pages = tl.cdiv(length, BS)
    # each request's own pages dealt evenly to its splits (long and short requests finish together)
    per_split = tl.maximum(MIN_PAGES, tl.cdiv(n_pages, SPLITS))
    first = sp * per_split
    last = tl.minimum(first + per_split, n_pages)
    g = tl.arange(0, GP)
    d = tl.arange(0, D)
    t = tl.arange(0, BS)
    heads = kh * G + g
    q = tl.load(Q + (b * H + heads)[:, None] * D + d[None, :], mask=(g < G)[:, None], other=0.0)
    m = tl.full([GP], float("-inf"), tl.float32)
    den = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, D], tl.float32)
    for p in range(first, last):
        block = tl.load(BT + b * bt_stride + p).to(tl.int64)
        tile = (block * HKV + kh) * BS * D + t[:, None] * D + d[None, :]
        k = tl.load(K + tile)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        s = tl.where((p * BS + t)[None, :] < length, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.exp2(m - m_new)
        w = tl.exp2(s - m_new[:, None])
        den = den * alpha + tl.sum(w, 1)
        v = tl.load(V + tile)
        acc = acc * alpha[:, None] + tl.dot(w.to(v.dtype), v)
        m = m_new
    safe = tl.where(den > 0, den, 1.0)
    if SPLITS == 1:
        tl.store(O + (b * H + heads)[:, None] * D + d[None, :], (acc / safe[:, None]).to(O.dtype.element_ty),
                 mask=(g < G)[:, None])
    elif first < n_pages:  # splits past the request's pages write nothing; _combine skips them
        row = (b * H + heads) * SPLITS + sp
        tl.store(OP + row[:, None] * D + d[None, :], acc / safe[:, None], mask=(g < G)[:, None])
        tl.store(LSEP + row, m + tl.log2(safe), mask=g < G)


@triton.jit
def _combine(OP, LSEP, O, LENS, H: tl.constexpr, SPLITS: tl.constexpr, D: tl.constexpr, BS: tl.constexpr,
             MIN_PAGES: tl.constexpr):
    bh = tl.program_id(0)
    n_pages = tl.cdiv(tl.load(LENS + bh // H), BS)
    used = tl.cdiv(n_pages, tl.maximum(MIN_PAGES, tl.cdiv(n_pages, SPLITS)))
    s = tl.arange(0, SPLITS)
    d = tl.arange(0, D)
    lse = tl.load(LSEP + bh * SPLITS + s, mask=s < used, other=float("-inf"))
    w = tl.exp2(lse - tl.max(lse, 0))
    o = tl.load(OP + (bh * SPLITS + s)[:, None] * D + d[None, :], mask=(s < used)[:, None], other=0.0)
    tl.store(O + bh * D + d, (tl.sum(o * w[:, None], 0) / tl.sum(w, 0)).to(O.dtype.element_ty))


def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                 lens: torch.Tensor, scale: float, splits: int, min_pages: int = 4) -> torch.Tensor:
    """q [rows, heads, head_dim]; caches [blocks, kv_heads, block_size, head_dim]; block_table
    [rows, max_blocks] int32; lens [rows] int32 (>= 1). Up to `splits` (a power of 2) programs
    share one request's blocks, each at least `min_pages` of them. Returns [rows, heads, head_dim]."""
    rows, H, D = q.shape
    HKV, BS = k_cache.shape[1], k_cache.shape[2]
    G = H // HKV
    out = torch.empty_like(q)
    if splits == 1:
        op = lse = out  # unused
    else:
        op = torch.empty(rows, H, splits, D, device=q.device, dtype=torch.float32)
        lse = torch.empty(rows, H, splits, device=q.device, dtype=torch.float32)
    _decode[(rows, HKV, splits)](q, k_cache, v_cache, block_table, lens, out, op, lse, scale * _LOG2E,
                                 block_table.stride(0), H=H, HKV=HKV, G=G, GP=max(16, triton.next_power_of_2(G)),
                                 D=D, BS=BS, MIN_PAGES=min_pages, SPLITS=splits, num_warps=4, num_stages=2)
    if splits > 1:
        _combine[(rows * H,)](op, lse, out, lens, H=H, SPLITS=splits, D=D, BS=BS, MIN_PAGES=min_pages)
    return out
