"""Batched text generation for evaluation (and GRPO rollouts).

Public API (kept stable for evaluation, chat and GRPO):
    GenerationSettings: max_new_tokens, temperature (0 = greedy), top_p, seed, stop_strings
    Completion: text, num_tokens, truncated
    generate_completions(model, tokenizer, prompts, settings, batch_size) -> list[Completion]

Lower level (token ids in, token ids out; for GRPO rollouts and benchmarks):
    GenerationEngine(model, max_batch_size, max_seq_len, use_cuda_graph=None)
        .generate(prompt_ids, max_new_tokens, temperature, top_p, seed, eos_token_ids, stop_fn)
    generate_token_ids(model, prompt_ids, settings, eos_token_ids, tokenizer=None, ...)
    merge_lora_for_eval(model, dtype=torch.bfloat16)

How the engine works (see `GenerationEngine`):
  * A static KV cache: one preallocated tensor per K and V of shape
    [layers, slots, kv_heads, max_seq_len, head_dim]. Each request owns one slot; its token at
    position p has its keys/values at [:, slot, :, p]. Positions are per slot (no left padding).
  * Prefill runs the HF model's own submodules (norms, projections, MLP, rotary embedding) on the
    new prompts, right padded, with causal SDPA, and scatters K/V into the slots' cache rows.
  * Decode runs one token for every slot at once against the cache with an explicit
    "position <= current" mask; query heads are grouped by KV head so SDPA reads each K/V once
    (no repeat_kv). On CUDA one decode step is captured in a CUDA graph per KV-length bucket
    (the attention only reads the first `bucket` positions of the cache).
  * Continuous batching: the host syncs every `sync_every` steps, collects the new tokens,
    retires requests that hit EOS / a stop string / their token budget, and prefills waiting
    prompts into the freed slots.
  * Because the engine calls the model's submodules, an unmerged PEFT LoRA model works as is
    (rollouts); for evaluation merge the adapter first (`merge_lora_for_eval`).

On CPU `generate_completions` falls back to HF `generate` (simple and correct); the engine's core
loop also runs on CPU (eager, no graphs), which is what the tests compare against HF `generate`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int = 0
    stop_strings: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Completion:
    """One generated completion. `num_tokens` counts the new tokens including the EOS that ended it;
    `truncated` means generation stopped at `max_new_tokens` (no EOS, no stop string), i.e. the
    answer may be cut off: evaluation reports the share as truncated_rate."""

    text: str
    num_tokens: int
    truncated: bool


def _stop_hit(text: str, stop_strings: tuple[str, ...]) -> bool:
    return any(stop and stop in text for stop in stop_strings)


def _truncate_at_stop(text: str, stop_strings: tuple[str, ...]) -> str:
    cut = len(text)
    for stop in stop_strings:
        idx = text.find(stop)
        if idx != -1:
            cut = min(cut, idx)
    return text[:cut]


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

def merge_lora_for_eval(model, dtype: torch.dtype | None = torch.bfloat16):
    """Merge a PEFT LoRA model into plain weights (for evaluation) and cast to `dtype`.

    A model that is not a PEFT model is returned as is (cast to `dtype` if given). For a
    quantised base (QLoRA) load the base in bf16 before wrapping it with the adapter: merging into
    4-bit weights is lossy.
    """
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def eos_token_ids_of(model, tokenizer=None) -> list[int]:
    """EOS ids from the tokenizer and the model's generation config (union, order kept)."""
    ids: list[int] = []

    def add(x):
        if x is None:
            return
        for i in (x if isinstance(x, (list, tuple)) else [x]):
            if i is not None and int(i) not in ids:
                ids.append(int(i))

    if tokenizer is not None:
        add(tokenizer.eos_token_id)
    gen_cfg = getattr(model, "generation_config", None)
    if gen_cfg is not None:
        add(gen_cfg.eos_token_id)
    return ids


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """Pick one token per row of `logits` [n, vocab]: argmax if temperature <= 0, else
    temperature + top-p (nucleus) sampling via the exponential race (argmax p_i / E_i, E ~ Exp(1)),
    which draws from p exactly and needs no host sync."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, sorted_i = probs.sort(dim=-1, descending=True)
        drop = (sorted_p.cumsum(dim=-1) - sorted_p) > top_p  # the top token always stays
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, sorted_i, sorted_p)
    race = torch.empty_like(probs).exponential_(generator=generator).clamp_min_(1e-20)
    return (probs / race).argmax(dim=-1)


# ----------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------

_FAST_NORMS = {"Qwen2RMSNorm", "LlamaRMSNorm", "Qwen3RMSNorm", "MistralRMSNorm"}


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm with HF Qwen2/Llama numerics (float32 statistics, cast back, then scale)."""
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


def _add_rms(h: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float):
    h = h + delta
    return h, _rms(h, weight, eps)


def _rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def _flash_decode(q: torch.Tensor, k_flat: torch.Tensor, v_flat: torch.Tensor, cu_k: torch.Tensor,
                  max_k: int, used: torch.Tensor, scale: float | None, n_kv: int, grouped: bool = True):
    """One query token per sequence against its first `used` cached keys (FlashAttention varlen).

    q [S, n_heads, D]; k_flat/v_flat [S * L, n_kv, D] (sequence s owns rows s*L ...); cu_k = arange
    (S+1) * L. With `grouped`, the n_heads / n_kv query heads of one KV head are passed as that
    many query rows of a sequence with n_kv heads (non-causal: they share one position), so each
    block reads its K/V once instead of once per query head. Returns [S, n_heads * D].
    """
    S, nh, D = q.shape
    group = nh // n_kv
    if grouped and group > 1:
        qg = q.view(S, n_kv, group, D).transpose(1, 2).reshape(S * group, n_kv, D)
        cu_q = torch.arange(0, (S + 1) * group, group, device=q.device, dtype=torch.int32)
        o = torch.ops.aten._flash_attention_forward(qg, k_flat, v_flat, cu_q, cu_k, group, max_k, 0.0, False,
                                                    False, scale=scale, seqused_k=used)[0]
        return o.view(S, group, n_kv, D).transpose(1, 2).reshape(S, nh * D)
    cu_q = torch.arange(S + 1, device=q.device, dtype=torch.int32)
    o = torch.ops.aten._flash_attention_forward(q, k_flat, v_flat, cu_q, cu_k, 1, max_k, 0.0, False, False,
                                                scale=scale, seqused_k=used)[0]
    return o.reshape(S, nh * D)


_FLASH_OK: dict[tuple, bool] = {}


def _flash_varlen_available(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether aten's FlashAttention varlen forward with `seqused_k` runs here and gives the
    right answer in both decode layouts and the causal packed prefill."""
    key = (str(device), dtype, head_dim)
    if key not in _FLASH_OK:
        ok = False
        if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
            try:
                with torch.inference_mode():
                    S, L, nh, nkv, D = 3, 16, 6, 2, head_dim
                    g = torch.Generator(device=device).manual_seed(0)
                    q = torch.randn(S, nh, D, device=device, dtype=dtype, generator=g)
                    k = torch.randn(S * L, nkv, D, device=device, dtype=dtype, generator=g)
                    v = torch.randn(S * L, nkv, D, device=device, dtype=dtype, generator=g)
                    cu_k = torch.arange(S + 1, device=device, dtype=torch.int32) * L
                    used_l = [3, 16, 7]
                    used = torch.tensor(used_l, device=device, dtype=torch.int32)
                    ref = []
                    for s_, u in enumerate(used_l):
                        ks = k[s_ * L:s_ * L + u].float().repeat_interleave(nh // nkv, dim=1)  # [u, nh, D]
                        vs = v[s_ * L:s_ * L + u].float().repeat_interleave(nh // nkv, dim=1)
                        w = torch.softmax(torch.einsum("hd,khd->hk", q[s_].float(), ks) / D ** 0.5, -1)
                        ref.append(torch.einsum("hk,khd->hd", w, vs).reshape(-1))
                    ref = torch.stack(ref)
                    ok = True
                    for grouped in (True, False):
                        out = _flash_decode(q, k, v, cu_k, L, used, None, nkv, grouped).float()
                        ok = ok and bool(torch.allclose(out, ref, atol=3e-2, rtol=3e-2))
                    # causal packed prefill: sequence 0 = rows 0..4 of k/v, query its own 5 rows
                    cu = torch.tensor([0, 5], device=device, dtype=torch.int32)
                    qp = k[:5].repeat_interleave(nh // nkv, dim=1).contiguous()
                    o = torch.ops.aten._flash_attention_forward(qp, k[:5], v[:5], cu, cu, 5, 5, 0.0, True, False)[0]
                    ks, vs = (t[:5].float().repeat_interleave(nh // nkv, dim=1) for t in (k, v))
                    sc = torch.einsum("qhd,khd->hqk", qp.float(), ks) / D ** 0.5
                    sc = sc.masked_fill(torch.ones(5, 5, device=device, dtype=torch.bool).triu(1), float("-inf"))
                    ref_p = torch.einsum("hqk,khd->qhd", torch.softmax(sc, -1), vs)
                    ok = ok and bool(torch.allclose(o.float(), ref_p, atol=3e-2, rtol=3e-2))
            except Exception:  # noqa: BLE001 - any failure means "use SDPA"
                ok = False
        _FLASH_OK[key] = ok
    return _FLASH_OK[key]


class GenerationEngine:
    """Static-KV-cache, continuous-batching generation for HF decoder-only LMs of the
    Llama/Qwen2 family (`model.model.{embed_tokens,layers,norm,rotary_emb}`, `model.lm_head`,
    layers with `input_layernorm`, `self_attn.{q,k,v,o}_proj`, `post_attention_layernorm`, `mlp`;
    Qwen3-style `q_norm`/`k_norm` are applied when present). PEFT-wrapped models work unmerged.

    Args:
        max_batch_size: decode slots (requests generated at once).
        max_seq_len: prompt + new tokens that one slot holds (rounded up to `kv_bucket`).
        use_cuda_graph: capture decode steps in CUDA graphs (default: on for CUDA models).
        compile: torch.compile the decode step's elementwise pieces (residual+RMSNorm, RoPE,
            SiLU*up) into fused kernels (default: on with CUDA graphs).
        attn_impl: decode attention: "flash" (FlashAttention varlen with per-slot used lengths:
            reads only each slot's live K/V; CUDA bf16/fp16) or "sdpa" (masked SDPA over the first
            `kv_bucket` multiple covering the longest live slot; one graph per bucket). Default:
            flash where it runs, else sdpa.
        kv_bucket: see attn_impl="sdpa"; also the rounding of max_seq_len.
        sync_every: decode steps between host syncs (stop checks and slot refills happen there).
        prefill_tokens: padded-token budget of one prefill forward.
        min_refill: refill freed slots once this many are free (default slots // 8).
        fuse_weights: keep concatenated copies of q/k/v and gate/up weights so each is one GEMM
            (plain nn.Linear layers only; costs that much extra memory, ~1.7 GB for 1.5B). The
            copies are taken once: only for an engine that does not outlive weight updates
            (evaluation); GRPO with unmerged LoRA gets no fusion anyway.
        prefill_packed: prefill prompts back to back without padding (default with flash).
    """

    def __init__(self, model, max_batch_size: int = 256, max_seq_len: int = 2048,
                 use_cuda_graph: bool | None = None, compile: bool | None = None,
                 attn_impl: str | None = None, kv_bucket: int = 128, sync_every: int = 16,
                 prefill_tokens: int = 16384, min_refill: int | None = None,
                 fuse_weights: bool = False, prefill_packed: bool | None = None, flash_grouped: bool = True):
        self.model = model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.body = base.model
        self.lm_head = base.lm_head
        self.layers = list(self.body.layers)
        cfg = base.config
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.group = self.n_heads // self.n_kv
        if getattr(cfg, "use_sliding_window", False):
            raise NotImplementedError("sliding-window attention is not supported by the engine")
        emb_w = self.body.embed_tokens.weight
        self.device = emb_w.device
        self.dtype = emb_w.dtype
        self.slots = int(max_batch_size)
        self.kv_bucket = int(kv_bucket)
        self.max_seq_len = int(math.ceil(max_seq_len / self.kv_bucket) * self.kv_bucket)
        self.sync_every = int(sync_every)
        self.prefill_tokens = int(prefill_tokens)
        # refill freed slots only once this many are free (or the queue is that short): each
        # prefill is a burst of eager launches with the decode batch stalled
        self.min_refill = max(1, self.slots // 8) if min_refill is None else max(1, int(min_refill))
        self.stats: dict[str, float] = {}
        on_cuda = self.device.type == "cuda"
        self.use_cuda_graph = on_cuda if use_cuda_graph is None else bool(use_cuda_graph)
        if attn_impl is None:
            attn_impl = "flash" if _flash_varlen_available(self.device, self.dtype, self.head_dim) else "sdpa"
        if attn_impl not in ("flash", "sdpa"):
            raise ValueError(f"attn_impl must be 'flash' or 'sdpa', not {attn_impl!r}")
        self.attn_impl = attn_impl
        self.flash_grouped = bool(flash_grouped)
        # packed (padding-free) prefill: FlashAttention varlen on CUDA; else a per-sequence loop
        self.prefill_packed = (attn_impl == "flash") if prefill_packed is None else bool(prefill_packed)
        # Fast paths need known module semantics; otherwise the HF modules are called as they are.
        norms = [self.body.norm] + [m for l in self.layers for m in (l.input_layernorm, l.post_attention_layernorm)]
        self.fast_norm = all(type(m).__name__ in _FAST_NORMS for m in norms)
        self.fast_mlp = getattr(cfg, "hidden_act", None) == "silu" and all(
            hasattr(l.mlp, "gate_proj") and hasattr(l.mlp, "up_proj") for l in self.layers)
        rope_type = (getattr(self.body.rotary_emb, "rope_type", "default") or "default")
        self.rope_table = not any(t in rope_type for t in ("dynamic", "longrope"))
        self.compile = (self.use_cuda_graph and on_cuda) if compile is None else bool(compile)
        if self.compile:
            self._c_add_rms = torch.compile(_add_rms, dynamic=False, fullgraph=True)
            self._c_rope = torch.compile(_rope, dynamic=False, fullgraph=True)
            self._c_silu_mul = torch.compile(_silu_mul, dynamic=False, fullgraph=True)
            # every (slots, dtype) decode shape is one more compiled variant of the same functions
            import torch._dynamo as _dynamo
            _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, 64)
        else:
            self._c_add_rms, self._c_rope, self._c_silu_mul = _add_rms, _rope, _silu_mul
        # Prefill stays eager: it is GEMM-bound, and dynamic-shape compiles cost ~10 s cold.
        self._p_add_rms, self._p_rope, self._p_silu_mul = _add_rms, _rope, _silu_mul
        self.fused: list[tuple] | None = None
        plain = all(type(m) is torch.nn.Linear for l in self.layers for m in
                    (l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj))
        plain_mlp = self.fast_mlp and all(type(m) is torch.nn.Linear for l in self.layers
                                          for m in (l.mlp.gate_proj, l.mlp.up_proj))
        if fuse_weights and plain and plain_mlp and not any(hasattr(l.self_attn, "q_norm") for l in self.layers):
            with torch.no_grad():
                self.fused = []
                for l in self.layers:
                    a, mlp = l.self_attn, l.mlp
                    qkv_b = None
                    if a.q_proj.bias is not None:
                        qkv_b = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
                    self.fused.append((torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]), qkv_b,
                                       torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])))
        self._split_qkv = [self.n_heads * self.head_dim, self.n_kv * self.head_dim, self.n_kv * self.head_dim]
        n_layers = len(self.layers)
        shape = (n_layers, self.slots, self.max_seq_len, self.n_kv, self.head_dim)
        with torch.inference_mode():
            self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.slot_ids = torch.arange(self.slots, device=self.device)
            self.kv_positions = torch.arange(self.max_seq_len, device=self.device)
            self.cu_q = torch.arange(self.slots + 1, device=self.device, dtype=torch.int32)
            self.cu_k = self.cu_q * self.max_seq_len
            if self.rope_table:
                probe = torch.zeros(1, dtype=self.dtype, device=self.device)
                cos, sin = self.body.rotary_emb(probe, self.kv_positions[None, :])
                self.cos_tab, self.sin_tab = cos[0], sin[0]  # [L, head_dim]
            # static inputs of the decode step
            self.tok_buf = torch.zeros(self.slots, dtype=torch.long, device=self.device)
            self.pos_buf = torch.zeros(self.slots, dtype=torch.long, device=self.device)
        self._graphs: dict[tuple[int, bool], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None

    # -- memory --------------------------------------------------------------------------------
    @property
    def cache_bytes(self) -> int:
        return 2 * self.k_cache.numel() * self.k_cache.element_size()

    # -- pieces ---------------------------------------------------------------------------------
    def _cos_sin(self, positions: torch.Tensor, like: torch.Tensor):
        if self.rope_table:
            return self.cos_tab[positions], self.sin_tab[positions]
        return self.body.rotary_emb(like, positions if positions.dim() == 2 else positions[:, None])

    def _norm(self, module, x, fused_add=None, delta=None):
        """(h + delta, norm(h + delta)) or norm(x) through the fast or the module path."""
        if delta is not None:
            if self.fast_norm:
                return (fused_add or _add_rms)(x, delta, module.weight, module.variance_epsilon)
            h = x + delta
            return h, module(h)
        return _rms(x, module.weight, module.variance_epsilon) if self.fast_norm else module(x)

    def _mlp(self, layer, x, silu_mul=_silu_mul, i: int | None = None):
        if self.fused is not None and i is not None:
            gate, up = F.linear(x, self.fused[i][2]).chunk(2, dim=-1)
            return layer.mlp.down_proj(silu_mul(gate, up))
        if self.fast_mlp:
            mlp = layer.mlp
            return mlp.down_proj(silu_mul(mlp.gate_proj(x), mlp.up_proj(x)))
        return layer.mlp(x)

    def _qkv(self, attn, x, lead: tuple[int, ...], i: int | None = None):
        if self.fused is not None and i is not None:
            q, k, v = F.linear(x, self.fused[i][0], self.fused[i][1]).split(self._split_qkv, dim=-1)
            return (q.view(*lead, self.n_heads, self.head_dim), k.view(*lead, self.n_kv, self.head_dim),
                    v.view(*lead, self.n_kv, self.head_dim))
        q = attn.q_proj(x).view(*lead, self.n_heads, self.head_dim)
        k = attn.k_proj(x).view(*lead, self.n_kv, self.head_dim)
        v = attn.v_proj(x).view(*lead, self.n_kv, self.head_dim)
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        return q, k, v

    # -- the forward passes ----------------------------------------------------------------------
    def _decode_forward(self, kv_len: int) -> torch.Tensor:
        """One token for every slot: tok_buf at pos_buf. Returns logits [slots, vocab]."""
        S, D = self.slots, self.head_dim
        pos = self.pos_buf
        h = self.body.embed_tokens(self.tok_buf)  # [S, hidden]
        cos, sin = self._cos_sin(pos, h)
        if cos.dim() == 3:
            cos, sin = cos[:, 0], sin[:, 0]
        cos, sin = cos[:, None, :], sin[:, None, :]  # [S, 1, D]
        if self.attn_impl == "flash":
            used = (pos + 1).to(torch.int32)
        else:
            mask = (self.kv_positions[:kv_len][None, :] <= pos[:, None]).view(S, 1, 1, kv_len)
        x = self._norm(self.layers[0].input_layernorm, h)
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            q, k, v = self._qkv(attn, x, (S,), i)
            q, k = self._c_rope(q, k, cos, sin)
            kc, vc = self.k_cache[i], self.v_cache[i]  # [S, L, n_kv, D]
            kc[self.slot_ids, pos] = k
            vc[self.slot_ids, pos] = v
            if self.attn_impl == "flash":
                o = _flash_decode(q, kc.view(-1, self.n_kv, D), vc.view(-1, self.n_kv, D), self.cu_k,
                                  self.max_seq_len, used, attn.scaling, self.n_kv, self.flash_grouped)
            else:
                # the query heads that share one KV head act as that head's "query rows", so
                # K/V are read once per KV head (no repeat_kv)
                qg = q.view(S, self.n_kv, self.group, D)
                o = F.scaled_dot_product_attention(
                    qg, kc[:, :kv_len].transpose(1, 2), vc[:, :kv_len].transpose(1, 2),
                    attn_mask=mask, scale=attn.scaling)
            o = o.reshape(S, self.n_heads * D)
            h, x = self._norm(layer.post_attention_layernorm, h, self._c_add_rms, attn.o_proj(o))
            nxt = self.layers[i + 1].input_layernorm if i + 1 < len(self.layers) else self.body.norm
            h, x = self._norm(nxt, h, self._c_add_rms, self._mlp(layer, x, self._c_silu_mul, i))
        return self.lm_head(x)

    def _prefill_forward(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                         last_idx: torch.Tensor) -> torch.Tensor:
        """Right-padded prompts [n, T] starting at position 0, written into `slots`' cache rows.
        Returns logits [n, vocab] at `last_idx`."""
        n, T = tokens.shape
        h = self.body.embed_tokens(tokens)
        cos, sin = self._cos_sin(positions, h)
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # [n, T, 1, D]
        x = self._norm(self.layers[0].input_layernorm, h)
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            q, k, v = self._qkv(attn, x, (n, T), i)
            q, k = self._p_rope(q, k, cos, sin)
            self.k_cache[i][slots[:, None], positions] = k
            self.v_cache[i][slots[:, None], positions] = v
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True, scale=attn.scaling, enable_gqa=self.group > 1)
            o = o.transpose(1, 2).reshape(n, T, self.n_heads * self.head_dim)
            h, x = self._norm(layer.post_attention_layernorm, h, self._p_add_rms, attn.o_proj(o))
            nxt = self.layers[i + 1].input_layernorm if i + 1 < len(self.layers) else self.body.norm
            h, x = self._norm(nxt, h, self._p_add_rms, self._mlp(layer, x, self._p_silu_mul, i))
        return self.lm_head(x[torch.arange(n, device=x.device), last_idx])

    def _prefill_packed_forward(self, tokens: torch.Tensor, positions: torch.Tensor, slot_of: torch.Tensor,
                                cu: torch.Tensor, max_len: int) -> torch.Tensor:
        """Prompts packed back to back (no padding), FlashAttention varlen with causal masking.
        tokens/positions/slot_of [total]; cu [n + 1] int32 offsets. Returns logits [n, vocab]."""
        tot = tokens.shape[0]
        h = self.body.embed_tokens(tokens)
        cos, sin = self._cos_sin(positions, h)
        if cos.dim() == 3:
            cos, sin = cos[:, 0], sin[:, 0]
        cos, sin = cos[:, None, :], sin[:, None, :]  # [total, 1, D]
        x = self._norm(self.layers[0].input_layernorm, h)
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            q, k, v = self._qkv(attn, x, (tot,), i)
            q, k = self._p_rope(q, k, cos, sin)
            v = v.contiguous()
            self.k_cache[i][slot_of, positions] = k
            self.v_cache[i][slot_of, positions] = v
            o = self._varlen_causal_attn(q, k, v, cu, max_len, attn.scaling)
            o = o.reshape(tot, self.n_heads * self.head_dim)
            h, x = self._norm(layer.post_attention_layernorm, h, self._p_add_rms, attn.o_proj(o))
            nxt = self.layers[i + 1].input_layernorm if i + 1 < len(self.layers) else self.body.norm
            h, x = self._norm(nxt, h, self._p_add_rms, self._mlp(layer, x, self._p_silu_mul, i))
        return self.lm_head(x[cu[1:].long() - 1])

    def _varlen_causal_attn(self, q, k, v, cu, max_len: int, scale: float) -> torch.Tensor:
        if self.attn_impl == "flash":
            return torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, max_len, max_len, 0.0, True, False,
                                                           scale=scale)[0]
        # reference path (CPU tests): one causal SDPA per packed sequence
        bounds = cu.tolist()
        outs = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            outs.append(F.scaled_dot_product_attention(
                q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1), is_causal=True,
                scale=scale, enable_gqa=self.group > 1).transpose(0, 1))
        return torch.cat(outs)

    def _advance(self, nxt: torch.Tensor) -> None:
        self.tok_buf.copy_(nxt)
        self.pos_buf.add_(1).clamp_(max=self.max_seq_len - 1)

    def _decode_body(self, kv_len: int, greedy: bool) -> torch.Tensor:
        logits = self._decode_forward(kv_len)
        if greedy:
            self._advance(logits.argmax(dim=-1))
        return logits

    def _decode(self, kv_len: int, greedy: bool) -> torch.Tensor:
        """One decode step; with `greedy` it also advances tok_buf/pos_buf (inside the graph)."""
        if not self.use_cuda_graph:
            return self._decode_body(kv_len, greedy)
        entry = self._graphs.get((kv_len, greedy))
        if entry is None:
            entry = self._capture(kv_len, greedy)
        graph, out = entry
        graph.replay()
        return out

    def _capture(self, kv_len: int, greedy: bool):
        # Warm up (and compile) on a side stream without advancing the state, then capture.
        tok, pos = self.tok_buf.clone(), self.pos_buf.clone()
        stream = torch.cuda.Stream(device=self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._decode_body(kv_len, greedy)
                self.tok_buf.copy_(tok)
                self.pos_buf.copy_(pos)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._decode_body(kv_len, greedy)
        self._graphs[(kv_len, greedy)] = (graph, out)
        return graph, out

    @torch.inference_mode()
    def warmup(self, greedy: bool = True) -> None:
        """Compile and capture the decode graphs now (otherwise on first use)."""
        if not self.use_cuda_graph:
            return
        if self.attn_impl == "flash":
            lens = [self.max_seq_len]
        else:
            lens = list(range(self.kv_bucket, self.max_seq_len + 1, self.kv_bucket))
        for kv_len in lens:
            if (kv_len, greedy) not in self._graphs:
                self._capture(kv_len, greedy)
        torch.cuda.synchronize(self.device)

    def _bucket(self, length: int) -> int:
        if self.attn_impl == "flash":
            return self.max_seq_len
        return min(self.max_seq_len, int(math.ceil(length / self.kv_bucket)) * self.kv_bucket)

    # -- prefill --------------------------------------------------------------------------------
    def _prefill(self, slots: list[int], prompts: list[list[int]]) -> torch.Tensor:
        """Prefill prompts into slots (chunked by the token budget); returns last-token logits
        in the given order."""
        if self.prefill_packed:
            return self._prefill_packed(slots, prompts)
        order = sorted(range(len(prompts)), key=lambda j: len(prompts[j]))
        out: list[torch.Tensor | None] = [None] * len(prompts)
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and (end + 1 - start) * len(prompts[order[end]]) <= self.prefill_tokens:
                end += 1
            idx = order[start:end]
            T = len(prompts[idx[-1]])
            toks = torch.zeros(len(idx), T, dtype=torch.long)
            for r, j in enumerate(idx):
                toks[r, :len(prompts[j])] = torch.tensor(prompts[j], dtype=torch.long)
            toks = toks.to(self.device, non_blocking=True)
            lens = torch.tensor([len(prompts[j]) for j in idx], device=self.device)
            positions = torch.arange(T, device=self.device)[None, :].expand(len(idx), T)
            slot_t = torch.tensor([slots[j] for j in idx], device=self.device)
            logits = self._prefill_forward(toks, positions, slot_t, lens - 1)
            self.stats["prefill_padded_tokens"] = self.stats.get("prefill_padded_tokens", 0) + len(idx) * T
            self.stats["prefill_chunks"] = self.stats.get("prefill_chunks", 0) + 1
            for r, j in enumerate(idx):
                out[j] = logits[r]
            start = end
        return torch.stack(out)  # type: ignore[arg-type]

    def _prefill_packed(self, slots: list[int], prompts: list[list[int]]) -> torch.Tensor:
        outs = []
        start = 0
        while start < len(prompts):
            end, total = start + 1, len(prompts[start])
            while end < len(prompts) and total + len(prompts[end]) <= self.prefill_tokens:
                total += len(prompts[end])
                end += 1
            chunk = prompts[start:end]
            lens = [len(p) for p in chunk]
            # built as Python lists: torch.repeat_interleave on CPU took ~10 ms a call here
            flat = [t for p in chunk for t in p]
            positions = [i for n in lens for i in range(n)]
            slot_of = [sl for sl, n in zip(slots[start:end], lens) for _ in range(n)]
            cu = [0]
            for n in lens:
                cu.append(cu[-1] + n)
            host = torch.tensor([flat, positions, slot_of], dtype=torch.long)
            dev = host.to(self.device, non_blocking=True)
            cu_t = torch.tensor(cu, dtype=torch.int32).to(self.device, non_blocking=True)
            outs.append(self._prefill_packed_forward(dev[0], dev[1], dev[2], cu_t, max(lens)))
            self.stats["prefill_padded_tokens"] = self.stats.get("prefill_padded_tokens", 0) + total
            self.stats["prefill_chunks"] = self.stats.get("prefill_chunks", 0) + 1
            start = end
        return torch.cat(outs)

    # -- the loop -------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int],
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                 eos_token_ids: Sequence[int] = (),
                 stop_fn: Callable[[list[int], int], int | None] | None = None,
                 show_progress: bool = False) -> list[list[int]]:
        """Generate for every prompt; returns the new token ids per prompt (an EOS that ended a
        request is included; nothing after it).

        max_new_tokens: one budget for all, or one per prompt.
        stop_fn(tokens, n_new) -> cut or None: called when a request got `n_new` new tokens; return
            the length to keep (the request then ends) or None to go on.
        Sampling draws from one generator seeded with `seed`, so results are reproducible for the
        same prompts, settings and `max_batch_size`.
        """
        n_req = len(prompt_ids)
        if isinstance(max_new_tokens, int):
            budgets = [max_new_tokens] * n_req
        else:
            budgets = [int(m) for m in max_new_tokens]
            assert len(budgets) == n_req
        for p, m in zip(prompt_ids, budgets):
            if len(p) == 0:
                raise ValueError("empty prompt")
            if len(p) + m > self.max_seq_len:
                raise ValueError(f"prompt of {len(p)} tokens + {m} new tokens exceeds the engine's "
                                 f"max_seq_len {self.max_seq_len}")
        eos = set(int(e) for e in eos_token_ids)
        greedy = temperature <= 0
        was_training = self.model.training
        self.model.eval()
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(seed))
        results: list[list[int] | None] = [None] * n_req
        waiting = deque(j for j in range(n_req) if budgets[j] > 0)
        for j in range(n_req):
            if budgets[j] <= 0:
                results[j] = []
        slot_req = [-1] * self.slots
        slot_pos = [0] * self.slots  # position of the token in tok_buf (next K/V write)
        outs: dict[int, list[int]] = {}
        hist = torch.zeros(self.slots, self.sync_every, dtype=torch.long, device=self.device)
        bar = tqdm(total=n_req, desc="generate", disable=not show_progress)
        st = self.stats = dict.fromkeys(("prefill_calls", "prefill_prompts", "prefill_s", "prefill_gpu_s",
                                         "decode_steps", "slot_steps_active", "decode_s"), 0.0)
        timed = self.device.type == "cuda"
        prefill_events: list = []

        def push(slot: int, new: list[int]) -> bool:
            """Append new tokens of the request in `slot`; True if it finished."""
            j = slot_req[slot]
            toks = outs[j]
            for t in new:
                toks.append(t)
                if t in eos or len(toks) >= budgets[j]:
                    break
            done = (toks[-1] in eos) or len(toks) >= budgets[j]
            if stop_fn is not None:
                cut = stop_fn(toks, len(new))
                if cut is not None:
                    del toks[cut:]
                    done = True
            if done:
                results[j] = toks
                del outs[j]
                slot_req[slot] = -1
                bar.update(1)
            return done

        try:
            while True:
                free = [s for s in range(self.slots) if slot_req[s] == -1]
                if waiting and len(free) >= min(self.min_refill, len(waiting)):
                    t_pre = time.perf_counter()
                    take = [waiting.popleft() for _ in range(min(len(free), len(waiting)))]
                    slots = free[:len(take)]
                    if timed:
                        ev = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                        ev[0].record()
                    logits = self._prefill(slots, [list(prompt_ids[j]) for j in take])
                    if timed:
                        ev[1].record()
                        prefill_events.append(ev)
                    first = sample_next(logits, temperature, top_p, gen)
                    slot_t = torch.tensor(slots, device=self.device)
                    self.tok_buf.index_copy_(0, slot_t, first)
                    self.pos_buf.index_copy_(0, slot_t, torch.tensor([len(prompt_ids[j]) for j in take],
                                                                     device=self.device))
                    first_host = first.tolist()
                    for s, j, t in zip(slots, take, first_host):
                        slot_req[s] = j
                        slot_pos[s] = len(prompt_ids[j])
                        outs[j] = []
                        push(s, [t])
                    st["prefill_calls"] += 1
                    st["prefill_prompts"] += len(take)
                    st["prefill_s"] += time.perf_counter() - t_pre
                    continue  # refill again if requests finished on their first token
                active = [s for s in range(self.slots) if slot_req[s] != -1]
                if not active:
                    break
                k = min(self.sync_every, max(budgets[slot_req[s]] - len(outs[slot_req[s]]) for s in active))
                top = max(slot_pos[s] for s in active)
                t_dec = time.perf_counter()
                st["decode_steps"] += k
                st["slot_steps_active"] += len(active) * k
                for step in range(k):
                    logits = self._decode(self._bucket(top + step + 1), greedy)
                    if not greedy:
                        self._advance(sample_next(logits, temperature, top_p, gen))
                    hist[:, step].copy_(self.tok_buf)
                new = hist[:, :k].tolist()
                st["decode_s"] += time.perf_counter() - t_dec
                for s in active:
                    slot_pos[s] += k
                    push(s, new[s])
            st["prefill_gpu_s"] = sum(a.elapsed_time(b) for a, b in prefill_events) / 1e3
        finally:
            bar.close()
            if was_training:
                self.model.train()
        return results  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# Function-level API
# ----------------------------------------------------------------------------------------------

def make_stop_fn(tokenizer, stop_strings: Sequence[str]):
    """stop_fn for `GenerationEngine.generate`: ends a request at the first token whose decoded
    text contains a stop string (the text is decoded over a window of recent tokens)."""
    stops = tuple(s for s in stop_strings if s)
    if not stops:
        return None
    margin = max(len(s) for s in stops) + 4

    def hit(ids: list[int]) -> bool:
        text = tokenizer.decode(ids, skip_special_tokens=True)
        return any(s in text for s in stops)

    def stop_fn(toks: list[int], n_new: int):
        start = max(0, len(toks) - n_new - margin)
        if not hit(toks[start:]):
            return None
        for end in range(max(start + 1, len(toks) - n_new + 1), len(toks) + 1):
            if hit(toks[max(0, end - n_new - margin):end]):
                return end
        return len(toks)

    return stop_fn


def generate_token_ids(model, prompt_ids: Sequence[Sequence[int]], settings: GenerationSettings,
                       eos_token_ids: Sequence[int] = (), tokenizer=None,
                       max_batch_size: int = 256, engine: GenerationEngine | None = None,
                       max_new_tokens: Sequence[int] | None = None,
                       show_progress: bool = False, **engine_kwargs) -> list[list[int]]:
    """Token ids in, new token ids out (EOS included when it ended a request), through the engine.

    Pass `engine` to reuse one across calls (GRPO rollouts: its CUDA graphs and cache stay; the
    graphs read the model's weights in place, so optimizer steps are seen; but they also freeze
    the Python-side choices made at capture, so do not reuse an engine across toggling adapters on
    and off, e.g. a PEFT `disable_adapter()` reference pass). Stop strings need
    `tokenizer`. `max_new_tokens` (per prompt) overrides `settings.max_new_tokens`.
    """
    budgets = list(max_new_tokens) if max_new_tokens is not None else [settings.max_new_tokens] * len(prompt_ids)
    if engine is None:
        # a per-call engine cannot go stale, so fused weight copies are safe (plain Linear only)
        engine_kwargs.setdefault("fuse_weights", next(model.parameters()).is_cuda)
        need = max((len(p) + m for p, m in zip(prompt_ids, budgets)), default=1)
        engine = GenerationEngine(model, max_batch_size=min(max_batch_size, max(1, len(prompt_ids))),
                                  max_seq_len=need, **engine_kwargs)
    stop_fn = make_stop_fn(tokenizer, settings.stop_strings) if tokenizer is not None else None
    return engine.generate(prompt_ids, budgets, temperature=settings.temperature, top_p=settings.top_p,
                           seed=settings.seed, eos_token_ids=eos_token_ids, stop_fn=stop_fn,
                           show_progress=show_progress)


@torch.inference_mode()
def generate_completions(model, tokenizer, prompts: list[str], settings: GenerationSettings,
                         batch_size: int | None = None, show_progress: bool = True,
                         use_engine: bool | None = None) -> list[Completion]:
    """Generate one completion per prompt.

    Prompts are already-rendered chat text; each Completion's text holds only the new text, cut at
    the first stop string. `batch_size` is the most requests in flight at once, on every device:
    on CUDA (or with use_engine=True) the static-cache, CUDA-graph, continuous-batching engine's
    slot count; on CPU the batch size of HF `generate` (left padding). None: as many as the
    device allows (the engine's own cap of 256 slots; on CPU every prompt in one batch).
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    eos_ids = eos_token_ids_of(model, tokenizer)
    eos_set = set(eos_ids or [tokenizer.eos_token_id])
    stops = settings.stop_strings
    if use_engine is None:
        use_engine = device.type == "cuda"
    if use_engine:
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        slots = {} if batch_size is None else {"max_batch_size": batch_size}
        new = generate_token_ids(model, ids, settings, eos_token_ids=eos_ids, tokenizer=tokenizer,
                                 show_progress=show_progress, **slots)
        out = []
        for toks in new:
            text = tokenizer.decode(toks, skip_special_tokens=True)
            # the engine keeps the EOS that ended a request and cuts at a stop string's token
            ended = bool(toks) and toks[-1] in eos_set
            out.append(Completion(_truncate_at_stop(text, stops), len(toks),
                                  not ended and not _stop_hit(text, stops) and len(toks) >= settings.max_new_tokens))
        return out

    tokenizer.padding_side = "left"
    torch.manual_seed(settings.seed)
    do_sample = settings.temperature > 0
    outputs: list[Completion] = []
    step = batch_size or max(1, len(prompts))
    batches = range(0, len(prompts), step)
    for start in tqdm(batches, desc="generate", disable=not show_progress):
        chunk = prompts[start:start + step]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        gen = model.generate(
            **enc,
            max_new_tokens=settings.max_new_tokens,
            do_sample=do_sample,
            temperature=settings.temperature if do_sample else None,
            top_p=settings.top_p if do_sample else None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos_ids or tokenizer.eos_token_id,
        )
        new_tokens = gen[:, enc["input_ids"].shape[1]:]
        for row in new_tokens.tolist():
            # a finished row is padded after its EOS; count up to and including the EOS
            end = next((i + 1 for i, t in enumerate(row) if t in eos_set), None)
            count = end if end is not None else sum(t != tokenizer.pad_token_id for t in row)
            text = tokenizer.decode(row, skip_special_tokens=True)
            outputs.append(Completion(_truncate_at_stop(text, stops), count,
                                      end is None and not _stop_hit(text, stops)))
    return outputs
