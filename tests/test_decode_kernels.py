"""The decode step's RoPE + K/V cache write kernel (run by Triton's CPU interpreter) against the
PyTorch reference the CPU engine uses. (The paged-attention kernel's loop bounds are tensors, which
the interpreter does not run; bench/generation.py's check_attention compares it on the GPU.)"""

import os

import pytest
import torch

from tinyreason.generation.attention import rope, store_kv

pytest.importorskip("triton")


@pytest.fixture(scope="module", autouse=True)
def interpreter():
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU test of a Triton kernel: needs TRITON_INTERPRET=1 (tests/conftest.py sets it without a GPU)")


def rotary(positions, dim, theta=10000.0):
    inv = 1.0 / theta ** (torch.arange(0, dim, 2).float() / dim)
    ang = positions.float()[:, None] * inv[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def paged_setup(lens, heads=6, kv_heads=2, dim=32, bs=8, blocks=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = len(lens)
    kc = torch.randn(blocks, kv_heads, bs, dim, generator=gen)
    vc = torch.randn(blocks, kv_heads, bs, dim, generator=gen)
    per = max(-(-l // bs) for l in lens)
    table = (torch.randperm(blocks - 1, generator=gen)[:n * per].view(n, per) + 1).to(torch.int32)
    lens_t = torch.tensor(lens, dtype=torch.int32)
    pos = lens_t.long() - 1
    block = table.gather(1, (pos // bs)[:, None])[:, 0].long()
    # q, k, v as strided views of one fused projection output, as the model runner makes them
    qkv = torch.randn(n, (heads + 2 * kv_heads) * dim, generator=gen)
    q, k, v = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
    q, k, v = q.view(n, heads, dim), k.view(n, kv_heads, dim), v.view(n, kv_heads, dim)
    return q, k, v, kc, vc, table, lens_t, pos, block


def test_rope_store_matches_rope_then_cache_write():
    from tinyreason.generation.rope_kernel import rope_store

    q, k, v, kc, vc, table, lens, pos, block = paged_setup([5, 17, 1, 30])
    cos, sin = rotary(pos, q.shape[-1])
    offset = pos % kc.shape[2]
    kc_ref, vc_ref = kc.clone(), vc.clone()
    q_ref, k_ref = rope(q, k, cos, sin)
    store_kv(kc_ref, k_ref, block, offset)
    store_kv(vc_ref, v, block, offset)
    q_got = rope_store(q, k, v, cos, sin, kc, vc, block, offset)
    torch.testing.assert_close(q_got, q_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(kc, kc_ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(vc, vc_ref)
    assert not torch.equal(q_got, q)  # the rotation did something
