"""Attention over the paged KV cache: the call the model runner makes in every layer.

Cache layout, per layer: [num_blocks, kv_heads, block_size, head_dim], so one block of one KV head
is a contiguous tile. Two implementations of the same two calls:

* `TorchAttention` — plain PyTorch (gather + SDPA). Runs anywhere; the CPU tests use it as the
  reference against HF `generate`.
* `CudaAttention` — prefill through FlashAttention's varlen kernel (aten), decode through two Triton
  kernels: RoPE + the K/V cache write in one launch (rope_kernel.py), then paged attention that
  reads each request's blocks once per KV head (the query heads of a group are the rows of one
  tile) and splits long contexts over several programs (paged_kernel.py).

Both calls take q and k before RoPE (cos, sin: [N, head_dim] at each token's position).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope(q, k, cos, sin):
    """HF's rotary embedding (Llama/Qwen2): q, k [N, heads, D]; cos, sin [N, D]."""
    cos, sin = cos[:, None, :], sin[:, None, :]
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def store_kv(cache: torch.Tensor, x: torch.Tensor, block: torch.Tensor, offset: torch.Tensor) -> None:
    """cache[block[i], :, offset[i]] = x[i] for tokens i (x [N, kv_heads, head_dim])."""
    cache[block, :, offset] = x


def gather_kv(cache: torch.Tensor, block: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    return cache[block, :, offset]  # [N, kv_heads, head_dim]


@dataclass
class PrefillBatch:
    """New tokens of several requests packed back to back (no padding)."""
    block: torch.Tensor      # [N] where each new token's K/V go
    offset: torch.Tensor     # [N]
    cu_q: torch.Tensor       # [n + 1] int32 offsets of each request's new tokens
    cu_k: torch.Tensor       # [n + 1] int32 offsets of each request's whole context (cached + new)
    max_q: int
    max_k: int
    ctx_block: torch.Tensor | None   # [sum context] block/offset of every context token, when any
    ctx_offset: torch.Tensor | None  # request has cached tokens (else the new K/V are the context)


@dataclass
class DecodeBatch:
    """One new token for each of `rows` requests."""
    block: torch.Tensor       # [rows] where the new token's K/V go
    offset: torch.Tensor      # [rows]
    block_table: torch.Tensor  # [rows, max_blocks] int32
    lens: torch.Tensor         # [rows] int32 context length including the new token
    splits: int                # programs a request's context is split over (CudaAttention)


class TorchAttention:
    def __init__(self, scale: float, n_heads: int, n_kv: int):
        self.scale, self.n_heads, self.n_kv = scale, n_heads, n_kv

    @staticmethod
    def prefill_inputs(q, k, v, cos, sin, k_cache, v_cache, b: PrefillBatch):
        """RoPE, the new K/V into the cache, and the keys/values to attend over: the new ones, or
        every context token's from the cache when some requests have cached tokens."""
        q, k = rope(q, k, cos, sin)
        store_kv(k_cache, k, b.block, b.offset)
        store_kv(v_cache, v, b.block, b.offset)
        if b.ctx_block is not None:
            k, v = gather_kv(k_cache, b.ctx_block, b.ctx_offset), gather_kv(v_cache, b.ctx_block, b.ctx_offset)
        return q, k, v

    def prefill(self, q, k, v, cos, sin, k_cache, v_cache, b: PrefillBatch) -> torch.Tensor:
        q, k, v = self.prefill_inputs(q, k, v, cos, sin, k_cache, v_cache, b)
        outs = []
        cq, ck = b.cu_q.tolist(), b.cu_k.tolist()
        for i in range(len(cq) - 1):
            qi, ki, vi = (t.transpose(0, 1) for t in (q[cq[i]:cq[i + 1]], k[ck[i]:ck[i + 1]], v[ck[i]:ck[i + 1]]))
            tq, tk = qi.shape[1], ki.shape[1]
            # causal, aligned to the end: new token j sits at position tk - tq + j
            mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)
            outs.append(F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, scale=self.scale,
                                                       enable_gqa=self.n_heads != self.n_kv).transpose(0, 1))
        return torch.cat(outs)

    def decode(self, q, k, v, cos, sin, k_cache, v_cache, b: DecodeBatch) -> torch.Tensor:
        q, k = rope(q, k, cos, sin)
        store_kv(k_cache, k, b.block, b.offset)
        store_kv(v_cache, v, b.block, b.offset)
        # every request's blocks side by side: [rows, kv_heads, max_blocks * block_size, head_dim]
        keys = k_cache[b.block_table.long()].transpose(1, 2).flatten(2, 3)
        values = v_cache[b.block_table.long()].transpose(1, 2).flatten(2, 3)
        mask = torch.arange(keys.shape[2], device=q.device)[None, :] < b.lens[:, None]
        o = F.scaled_dot_product_attention(q[:, :, None], keys, values, attn_mask=mask[:, None, None, :],
                                           scale=self.scale, enable_gqa=self.n_heads != self.n_kv)
        return o[:, :, 0]


class CudaAttention(TorchAttention):
    def prefill(self, q, k, v, cos, sin, k_cache, v_cache, b: PrefillBatch) -> torch.Tensor:
        q, k, v = self.prefill_inputs(q, k, v, cos, sin, k_cache, v_cache, b)
        # FlashAttention aligns the causal mask to the end when there are fewer queries than keys
        return torch.ops.aten._flash_attention_forward(q, k, v.contiguous(), b.cu_q, b.cu_k, b.max_q, b.max_k,
                                                       0.0, True, False, scale=self.scale)[0]

    def decode(self, q, k, v, cos, sin, k_cache, v_cache, b: DecodeBatch) -> torch.Tensor:
        from tinyreason.generation import paged_kernel, rope_kernel

        q = rope_kernel.rope_store(q, k, v, cos, sin, k_cache, v_cache, b.block, b.offset)
        return paged_kernel.paged_decode(q, k_cache, v_cache, b.block_table, b.lens, self.scale, b.splits)
