"""Runs the model over the paged KV cache: one layer body for prefill and decode, the attention
call plugged in (attention.py), decode steps captured in CUDA graphs per batch-size bucket.

The runner calls the HF model's own submodules (embeddings, norms, projections, MLP, rotary
embedding), so any Llama/Qwen2-family decoder works, and so does an unmerged PEFT LoRA model
(GRPO rollouts read the adapter in place). Where the module semantics are known it takes faster
routes: RMSNorm and SiLU-and-multiply as compiled elementwise kernels, RoPE fused with the cache
write (CUDA), q/k/v and gate/up as one GEMM each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinyreason.generation import sampler
from tinyreason.generation.attention import CudaAttention, DecodeBatch, PrefillBatch, TorchAttention
from tinyreason.generation.block_manager import cdiv

_FAST_NORMS = {"Qwen2RMSNorm", "LlamaRMSNorm", "Qwen3RMSNorm", "MistralRMSNorm"}
GREEDY, SAMPLE, TOP_P = "greedy", "sample", "top_p"


def _rms(x, weight, eps):
    """RMSNorm with HF Qwen2/Llama numerics (float32 statistics, cast back, then scale)."""
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _add_rms(h, delta, weight, eps):
    h = h + delta
    return h, _rms(h, weight, eps)


def _silu_mul(gate, up):
    return F.silu(gate) * up


def _joined(weights: list[torch.Tensor], copy: bool) -> torch.Tensor | None:
    """The weights stacked by rows: a view when they are consecutive blocks of one buffer, else a
    concatenated copy when `copy`, else None."""
    first = weights[0]
    offset, storage = first.storage_offset(), first.untyped_storage().data_ptr()
    for w in weights:
        if not w.is_contiguous() or w.untyped_storage().data_ptr() != storage or w.storage_offset() != offset:
            return torch.cat(weights) if copy else None
        offset += w.numel()
    rows = sum(w.shape[0] for w in weights)
    return first.as_strided((rows, first.shape[1]), (first.shape[1], 1))


def batch_buckets(max_seqs: int) -> list[int]:
    """Decode batch sizes that get a graph (a batch pads up to the next): 1, 2, 4, 8, 16, then
    steps of an eighth of the size (<= 12.5% padding) up to max_seqs."""
    sizes, b = [], 1
    while b < max_seqs:
        sizes.append(b)
        b = b * 2 if b < 16 else b + max(16, 2 ** (b.bit_length() - 3))
    return sizes + [max_seqs]


class ModelRunner:
    def __init__(self, model, max_seqs: int, max_model_len: int, block_size: int, num_blocks: int | None = None,
                 memory_utilization: float = 0.9, prefill_tokens: int = 8192, use_cuda_graph: bool | None = None,
                 compile: bool | None = None, fuse_weights: bool = False):
        self.model = model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.body, self.lm_head = base.model, base.lm_head
        self.layers = list(self.body.layers)
        cfg = base.config
        if getattr(cfg, "use_sliding_window", False):
            raise NotImplementedError("sliding-window attention is not supported by the engine")
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.vocab = self.lm_head.weight.shape[0]
        emb = self.body.embed_tokens.weight
        self.device, self.dtype = emb.device, emb.dtype
        on_cuda = self.device.type == "cuda"
        self.max_seqs, self.block_size = max_seqs, block_size
        self.max_blocks, self.max_model_len = cdiv(max_model_len, block_size), max_model_len
        scale = self.layers[0].self_attn.scaling
        fast_attn = on_cuda and self.dtype in (torch.float16, torch.bfloat16) and block_size >= 16
        self.attention = (CudaAttention if fast_attn else TorchAttention)(scale, self.n_heads, self.n_kv)
        self.use_cuda_graph = on_cuda if use_cuda_graph is None else use_cuda_graph
        norms = [self.body.norm] + [m for l in self.layers for m in (l.input_layernorm, l.post_attention_layernorm)]
        self.fast_norm = all(type(m).__name__ in _FAST_NORMS for m in norms)
        self.fast_mlp = getattr(cfg, "hidden_act", None) == "silu"
        rope_type = getattr(self.body.rotary_emb, "rope_type", "default") or "default"
        self.rope_table = not any(t in rope_type for t in ("dynamic", "longrope"))
        compile = (self.use_cuda_graph and on_cuda) if compile is None else compile
        # dynamic: one compile serves every batch-size bucket (a static compile per bucket costs seconds each)
        wrap = (lambda f: torch.compile(f, dynamic=True, fullgraph=True)) if compile else (lambda f: f)
        self.c_add_rms, self.c_silu_mul = wrap(_add_rms), wrap(_silu_mul)
        if compile:
            import torch._dynamo as dynamo

            dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 128)
        self.fused = self._fuse(copy=fuse_weights)
        with torch.inference_mode():
            if self.rope_table:
                positions = torch.arange(max_model_len, device=self.device)
                cos, sin = self.body.rotary_emb(emb[:1], positions[None])
                self.cos_tab, self.sin_tab = cos[0], sin[0]
            # static decode inputs (CUDA graphs read and advance them in place)
            self.tok = torch.zeros(max_seqs, dtype=torch.long, device=self.device)
            self.pos = torch.zeros(max_seqs, dtype=torch.long, device=self.device)
            self.seeds = torch.zeros(max_seqs, dtype=torch.long, device=self.device)
            # last position a row may write: a request that ended inside a multi-step window keeps
            # stepping until the host syncs, and must stay inside its own blocks
            self.limit = torch.zeros(max_seqs, dtype=torch.long, device=self.device)
            self.block_table = torch.zeros(max_seqs, self.max_blocks, dtype=torch.int32, device=self.device)
            self.temperature = torch.ones((), device=self.device)
            self.top_p = torch.ones((), device=self.device)
            if num_blocks is None:
                num_blocks = self.plan_blocks(memory_utilization, prefill_tokens)
            self.num_blocks = num_blocks
            shape = (len(self.layers), num_blocks, self.n_kv, block_size, self.head_dim)
            self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self.pool = None

    # -- memory ----------------------------------------------------------------------------------
    @property
    def block_bytes(self) -> int:
        return 2 * len(self.layers) * self.n_kv * self.block_size * self.head_dim * self.dtype.itemsize

    def plan_blocks(self, utilization: float, prefill_tokens: int) -> int:
        """KV blocks that fit: on CUDA, `utilization` of the card minus what is allocated now and
        the measured peak of a full prefill chunk and a full decode batch (run once on a 2-block
        scratch cache); never more than every slot at full length needs. On CPU: the latter."""
        worst = self.max_seqs * self.max_blocks + 1
        if self.device.type != "cuda":
            return worst
        shape = (len(self.layers), 2, self.n_kv, self.block_size, self.head_dim)
        self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        start = torch.cuda.memory_allocated(self.device)
        n = min(prefill_tokens, self.max_model_len)
        zeros = torch.zeros(n, dtype=torch.long, device=self.device)
        cu = torch.tensor([0, n], dtype=torch.int32, device=self.device)
        self.prefill_forward(torch.zeros(n, dtype=torch.long, device=self.device), torch.arange(n, device=self.device),
                             PrefillBatch(zeros + 1, zeros, cu, cu, n, n, None, None), cu[1:].long() - 1)
        self._decode_body(self.max_seqs, TOP_P, 1)
        torch.cuda.synchronize(self.device)
        activations = torch.cuda.max_memory_allocated(self.device) - start
        del self.k_cache, self.v_cache
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        # graphs keep their own copies of the decode activations: leave room for two more
        budget = total * utilization - (total - free) - 3 * activations
        blocks = int(budget // self.block_bytes)
        if blocks < 2:
            raise MemoryError(f"no GPU memory left for the KV cache ({free / 2**30:.1f} GiB free of "
                              f"{total / 2**30:.1f}; fix: a smaller prefill chunk or fewer slots)")
        return min(blocks, worst)

    # -- the model -------------------------------------------------------------------------------
    def _fuse(self, copy: bool):
        """Per layer (q/k/v weight, its bias, gate/up weight) as single GEMM operands, or None.
        Weights already laid out back to back in one buffer (rollout.MergedShadow) are used as a
        view, so later in-place weight updates are seen; otherwise they are concatenated, a copy,
        only when `copy` (fuse_weights) allows it."""
        plain = all(type(m) is torch.nn.Linear for l in self.layers for m in
                    (l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj, l.mlp.gate_proj, l.mlp.up_proj))
        if not (plain and self.fast_mlp) or any(hasattr(l.self_attn, "q_norm") for l in self.layers):
            return None
        fused = []
        with torch.no_grad():
            for l in self.layers:
                a = l.self_attn
                qkv = _joined([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], copy)
                gate_up = _joined([l.mlp.gate_proj.weight, l.mlp.up_proj.weight], copy)
                if qkv is None or gate_up is None:
                    return None
                bias = None if a.q_proj.bias is None else torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
                fused.append((qkv, bias, gate_up))
        return fused

    def _norm(self, module, h, delta=None, add_rms=_add_rms):
        if delta is None:
            return _rms(h, module.weight, module.variance_epsilon) if self.fast_norm else module(h)
        if self.fast_norm:
            return add_rms(h, delta, module.weight, module.variance_epsilon)
        h = h + delta
        return h, module(h)

    def _qkv(self, i, x):
        attn, n = self.layers[i].self_attn, x.shape[0]
        if self.fused is not None:
            w, b, _ = self.fused[i]
            sizes = [self.n_heads * self.head_dim, self.n_kv * self.head_dim, self.n_kv * self.head_dim]
            q, k, v = F.linear(x, w, b).split(sizes, dim=-1)
        else:
            q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        q, k, v = q.view(n, self.n_heads, self.head_dim), k.view(n, self.n_kv, self.head_dim), v.view(n, self.n_kv, self.head_dim)
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        return q, k, v

    def _mlp(self, i, x, silu_mul=_silu_mul):
        mlp = self.layers[i].mlp
        if self.fused is not None:
            gate, up = F.linear(x, self.fused[i][2]).chunk(2, dim=-1)
            return mlp.down_proj(silu_mul(gate, up))
        if self.fast_mlp:
            return mlp.down_proj(silu_mul(mlp.gate_proj(x), mlp.up_proj(x)))
        return mlp(x)

    def forward(self, tokens, positions, attend, compiled: bool) -> torch.Tensor:
        """The layer stack over packed tokens [N] at `positions` [N]; attend(i, q, k, v, cos, sin) ->
        [N, H, D] applies RoPE itself (fused into a kernel on the decode path). Returns the
        final-normed hidden states [N, hidden]."""
        add_rms, silu_mul = (self.c_add_rms, self.c_silu_mul) if compiled else (_add_rms, _silu_mul)
        h = self.body.embed_tokens(tokens)
        if self.rope_table:
            cos, sin = self.cos_tab[positions], self.sin_tab[positions]
        else:
            cos, sin = (t[0] for t in self.body.rotary_emb(h[None], positions[None]))
        x = self._norm(self.layers[0].input_layernorm, h)
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(i, x)
            o = attend(i, q, k, v, cos, sin).reshape(x.shape[0], self.n_heads * self.head_dim)
            h, x = self._norm(layer.post_attention_layernorm, h, layer.self_attn.o_proj(o), add_rms)
            nxt = self.layers[i + 1].input_layernorm if i + 1 < len(self.layers) else self.body.norm
            h, x = self._norm(nxt, h, self._mlp(i, x, silu_mul), add_rms)
        return x

    # -- prefill ---------------------------------------------------------------------------------
    def prefill_forward(self, tokens, positions, batch: PrefillBatch, last: torch.Tensor) -> torch.Tensor:
        """Logits [len(last), vocab] at the packed indices `last`."""
        attend = lambda i, q, k, v, cos, sin: self.attention.prefill(q, k, v, cos, sin, self.k_cache[i],  # noqa: E731
                                                                     self.v_cache[i], batch)
        return self.lm_head(self.forward(tokens, positions, attend, compiled=False)[last])

    def prefill(self, chunks) -> torch.Tensor:
        """chunks: (tokens of the request, first new position, new tokens, its blocks). Writes their
        K/V; returns each chunk's last-token logits [len(chunks), vocab]."""
        bs = self.block_size
        flat, pos, blk, off, ctx_blk, ctx_off, cu_q, cu_k = [], [], [], [], [], [], [0], [0]
        cached_any = any(start > 0 for _, start, _, _ in chunks)
        for toks, start, n, blocks in chunks:
            end = start + n
            flat += toks[start:end]
            pos += range(start, end)
            blk += [blocks[p // bs] for p in range(start, end)]
            off += [p % bs for p in range(start, end)]
            if cached_any:
                ctx_blk += [blocks[p // bs] for p in range(end)]
                ctx_off += [p % bs for p in range(end)]
            cu_q.append(cu_q[-1] + n)
            cu_k.append(cu_k[-1] + (end if cached_any else n))
        dev = self.device
        host = torch.tensor([flat, pos, blk, off], dtype=torch.long)
        t = host.to(dev, non_blocking=True)
        ctx = torch.tensor([ctx_blk, ctx_off], dtype=torch.long).to(dev, non_blocking=True) if cached_any else None
        cq, ck = (torch.tensor(c, dtype=torch.int32).to(dev, non_blocking=True) for c in (cu_q, cu_k))
        batch = PrefillBatch(t[2], t[3], cq, ck, max(c[2] for c in chunks),
                             max((c[1] + c[2] if cached_any else c[2]) for c in chunks),
                             ctx[0] if ctx is not None else None, ctx[1] if ctx is not None else None)
        return self.prefill_forward(t[0], t[1], batch, cq[1:].long() - 1)

    def copy_block(self, src: int, dst: int) -> None:
        self.k_cache[:, dst].copy_(self.k_cache[:, src])
        self.v_cache[:, dst].copy_(self.v_cache[:, src])

    def sample(self, logits, seeds: list[int], positions: list[int], mode: str) -> list[int]:
        if mode == GREEDY:
            return logits.argmax(dim=-1).tolist()
        s = torch.tensor(seeds, dtype=torch.long).to(self.device)
        p = torch.tensor(positions, dtype=torch.long).to(self.device)
        return sampler.sample(logits, s, p, self.temperature, self.top_p if mode == TOP_P else None).tolist()

    # -- decode ----------------------------------------------------------------------------------
    def _decode_body(self, rows: int, mode: str, splits: int) -> None:
        """One token for rows [0, rows): reads tok/pos, writes the next token into tok, pos += 1."""
        pos = torch.minimum(self.pos[:rows], self.limit[:rows])
        table = self.block_table[:rows]
        block = table.gather(1, (pos // self.block_size)[:, None])[:, 0].long()
        batch = DecodeBatch(block, pos % self.block_size, table, (pos + 1).to(torch.int32), splits)
        attend = lambda i, q, k, v, cos, sin: self.attention.decode(q, k, v, cos, sin, self.k_cache[i],  # noqa: E731
                                                                    self.v_cache[i], batch)
        logits = self.lm_head(self.forward(self.tok[:rows], pos, attend, compiled=True))
        if mode == GREEDY:
            nxt = logits.argmax(dim=-1)
        else:
            nxt = sampler.sample(logits, self.seeds[:rows], self.pos[:rows] + 1, self.temperature,
                                 self.top_p if mode == TOP_P else None)
        self.tok[:rows].copy_(nxt)
        self.pos[:rows].add_(1)

    def splits_for(self, rows: int) -> int:
        """Most programs one request's decode attention is split over (a power of 2, <= 32): about
        4 programs per SM when few requests run, and at most 64 blocks per program whatever the
        batch (each request's blocks are dealt evenly to its programs, so a long context does not
        straggle behind short ones); never pieces under 4 blocks."""
        if not isinstance(self.attention, CudaAttention):
            return 1
        sms = torch.cuda.get_device_properties(self.device).multi_processor_count
        want = min(max(4 * sms // (rows * self.n_kv), cdiv(self.max_blocks, 64)), self.max_blocks // 4, 32)
        splits = 1
        while splits < want:
            splits *= 2
        return min(splits, 32)

    def decode_step(self, rows: int, mode: str) -> None:
        bucket = next(b for b in batch_buckets(self.max_seqs) if b >= rows)
        splits = self.splits_for(bucket)
        if not self.use_cuda_graph:
            return self._decode_body(rows, mode, splits)
        key = (bucket, mode, splits)
        if key not in self.graphs:
            self.graphs[key] = self._capture(bucket, mode, splits)
        self.graphs[key].replay()

    def _capture(self, rows: int, mode: str, splits: int):
        saved = [t.clone() for t in (self.tok, self.pos)]
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):  # warm up (compile) without advancing the state
            for _ in range(2):
                self._decode_body(rows, mode, splits)
                self.tok.copy_(saved[0])
                self.pos.copy_(saved[1])
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self.pool = self.pool or torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self._decode_body(rows, mode, splits)
        return graph
