"""Triton kernel for the decode step's attention inputs: RoPE on q and k, k and v written to their
cache slots, in one launch (in place of a RoPE kernel and two cache scatters per layer).

One program per token: its query heads and KV heads are small tiles ([heads, head_dim]); the
rotation is computed in float32 and rounded once (as the compiled PyTorch RoPE does).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate(X, row_stride, COS, SIN, n, NH: tl.constexpr, NHP: tl.constexpr, D: tl.constexpr):
    """Heads [NH, D] of token n rotated: (x1, x2) -> (x1 c - x2 s, x2 c + x1 s), in float32."""
    h = tl.arange(0, NHP)[:, None]
    half = tl.arange(0, D // 2)[None, :]
    mask = h < NH
    base = X + n * row_stride + h * D + half
    x1 = tl.load(base, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(base + D // 2, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(COS + n * D + half).to(tl.float32)
    s = tl.load(SIN + n * D + half).to(tl.float32)
    return x1 * c - x2 * s, x2 * c + x1 * s, h, half, mask


@triton.jit
def _rope_store(Q, K, V, q_stride, kv_stride, COS, SIN, QO, KC, VC, BLOCK, OFFSET,
                H: tl.constexpr, HP: tl.constexpr, HKV: tl.constexpr, HKVP: tl.constexpr, D: tl.constexpr,
                BS: tl.constexpr):
    n = tl.program_id(0)
    q1, q2, h, half, mask = _rotate(Q, q_stride, COS, SIN, n, H, HP, D)
    out = QO + n * H * D + h * D + half
    tl.store(out, q1.to(QO.dtype.element_ty), mask=mask)
    tl.store(out + D // 2, q2.to(QO.dtype.element_ty), mask=mask)
    k1, k2, kh, half, kmask = _rotate(K, kv_stride, COS, SIN, n, HKV, HKVP, D)
    # cache layout [blocks, kv_heads, block_size, head_dim]
    slot = (tl.load(BLOCK + n).to(tl.int64) * HKV + kh) * BS * D + tl.load(OFFSET + n) * D + half
    tl.store(KC + slot, k1.to(KC.dtype.element_ty), mask=kmask)
    tl.store(KC + slot + D // 2, k2.to(KC.dtype.element_ty), mask=kmask)
    v = V + n * kv_stride + kh * D + half
    tl.store(VC + slot, tl.load(v, mask=kmask), mask=kmask)
    tl.store(VC + slot + D // 2, tl.load(v + D // 2, mask=kmask), mask=kmask)


def rope_store(q, k, v, cos, sin, k_cache, v_cache, block, offset) -> torch.Tensor:
    """q [N, H, D], k and v [N, HKV, D] (rows may be strided views of one q/k/v GEMM output, heads
    contiguous); cos, sin [N, D] (HF layout: the two halves equal); caches [blocks, HKV, BS, D];
    block, offset [N]. Writes rotated k and v into the caches; returns rotated q [N, H, D]."""
    n, heads, dim = q.shape
    kv_heads, bs = k_cache.shape[1], k_cache.shape[2]
    assert q.stride(2) == 1 and q.stride(1) == dim and k.stride() == v.stride() and k.stride(1) == dim
    out = torch.empty(n, heads, dim, dtype=q.dtype, device=q.device)
    cos, sin = cos.reshape(n, dim).contiguous(), sin.reshape(n, dim).contiguous()
    _rope_store[(n,)](q, k, v, q.stride(0), k.stride(0), cos, sin, out, k_cache, v_cache, block, offset,
                      H=heads, HP=triton.next_power_of_2(heads), HKV=kv_heads,
                      HKVP=triton.next_power_of_2(kv_heads), D=dim, BS=bs, num_warps=4)
    return out
