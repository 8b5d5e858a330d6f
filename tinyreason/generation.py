"""Batched text generation for evaluation (and GRPO rollouts).

Public API (kept stable for evaluation, chat and GRPO):
    GenerationSettings: max_new_tokens, temperature (0 = greedy), top_p, seed, stop_strings
    generate_completions(model, tokenizer, prompts, settings, batch_size) -> list[str]

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

class GenerationEngine:
    """Static-KV-cache, continuous-batching generation for HF decoder-only LMs of the
    Llama/Qwen2 family (`model.model.{embed_tokens,layers,norm,rotary_emb}`, `model.lm_head`,
    layers with `input_layernorm`, `self_attn.{q,k,v,o}_proj`, `post_attention_layernorm`, `mlp`;
    Qwen3-style `q_norm`/`k_norm` are applied when present). PEFT-wrapped models work unmerged.

    Args:
        max_batch_size: decode slots (requests generated at once).
        max_seq_len: prompt + new tokens that one slot holds (rounded up to `kv_bucket`).
        use_cuda_graph: capture decode steps in CUDA graphs (default: on for CUDA models).
        kv_bucket: decode attention reads the first multiple of `kv_bucket` cache positions that
            covers the longest active request (one CUDA graph per bucket, captured lazily).
        sync_every: decode steps between host syncs (stop checks and slot refills happen there).
        prefill_tokens: padded-token budget of one prefill forward.
    """

    def __init__(self, model, max_batch_size: int = 256, max_seq_len: int = 2048,
                 use_cuda_graph: bool | None = None, kv_bucket: int = 128, sync_every: int = 16,
                 prefill_tokens: int = 16384):
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
        self.use_cuda_graph = (self.device.type == "cuda") if use_cuda_graph is None else bool(use_cuda_graph)
        n_layers = len(self.layers)
        shape = (n_layers, self.slots, self.n_kv, self.max_seq_len, self.head_dim)
        with torch.inference_mode():
            self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.slot_ids = torch.arange(self.slots, device=self.device)
            self.kv_positions = torch.arange(self.max_seq_len, device=self.device)
            # static inputs of the decode step
            self.tok_buf = torch.zeros(self.slots, dtype=torch.long, device=self.device)
            self.pos_buf = torch.zeros(self.slots, dtype=torch.long, device=self.device)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None

    # -- memory --------------------------------------------------------------------------------
    @property
    def cache_bytes(self) -> int:
        return 2 * self.k_cache.numel() * self.k_cache.element_size()

    # -- the forward pass ----------------------------------------------------------------------
    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor | None,
                 kv_len: int, last_idx: torch.Tensor | None = None) -> torch.Tensor:
        """tokens/positions [n, T]. T == 1: decode of all slots (slots must be None = all) against
        the first `kv_len` cache positions. T > 1: prefill of right-padded prompts that start at
        position 0 into `slots`. Returns logits [n, vocab] of the last (or `last_idx`) token."""
        n, T = tokens.shape
        decode = slots is None
        h = self.body.embed_tokens(tokens)
        cos, sin = self.body.rotary_emb(h, positions)  # [n, T, head_dim]
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        if decode:
            pos = positions[:, 0]
            mask = (self.kv_positions[:kv_len][None, :] <= pos[:, None]).view(n, 1, 1, kv_len)
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(n, T, self.n_heads, self.head_dim)
            k = attn.k_proj(x).view(n, T, self.n_kv, self.head_dim)
            v = attn.v_proj(x).view(n, T, self.n_kv, self.head_dim)
            if hasattr(attn, "q_norm"):
                q, k = attn.q_norm(q), attn.k_norm(k)
            q = q.transpose(1, 2)
            k = k.transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            kc, vc = self.k_cache[i], self.v_cache[i]  # [slots, n_kv, L, head_dim]
            if decode:
                kc[self.slot_ids, :, pos] = k[:, :, 0]
                vc[self.slot_ids, :, pos] = v[:, 0]
                # [n, n_kv, group, hd]: the query heads that share one KV head act as the "query
                # rows" of that head, so K/V are read once per KV head.
                qg = q.reshape(n, self.n_kv, self.group, self.head_dim)
                o = F.scaled_dot_product_attention(qg, kc[:, :, :kv_len], vc[:, :, :kv_len],
                                                   attn_mask=mask, scale=attn.scaling)
                o = o.reshape(n, 1, self.n_heads * self.head_dim)
            else:
                kc[slots[:, None], :, positions] = k.transpose(1, 2)
                vc[slots[:, None], :, positions] = v
                o = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), is_causal=True,
                                                   scale=attn.scaling, enable_gqa=self.group > 1)
                o = o.transpose(1, 2).reshape(n, T, self.n_heads * self.head_dim)
            h = h + attn.o_proj(o)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        if last_idx is None:
            h = h[:, -1]
        else:
            h = h[torch.arange(n, device=h.device), last_idx]
        return self.lm_head(self.body.norm(h))

    def _decode_logits(self, kv_len: int) -> torch.Tensor:
        if not self.use_cuda_graph:
            return self._forward(self.tok_buf[:, None], self.pos_buf[:, None], None, kv_len)
        entry = self._graphs.get(kv_len)
        if entry is None:
            entry = self._capture(kv_len)
        graph, out = entry
        graph.replay()
        return out

    def _capture(self, kv_len: int):
        # Warm up on a side stream (also the real step: it writes the same K/V the replay will).
        stream = torch.cuda.Stream(device=self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self._forward(self.tok_buf[:, None], self.pos_buf[:, None], None, kv_len)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._forward(self.tok_buf[:, None], self.pos_buf[:, None], None, kv_len)
        self._graphs[kv_len] = (graph, out)
        return graph, out

    def _bucket(self, length: int) -> int:
        return min(self.max_seq_len, int(math.ceil(length / self.kv_bucket)) * self.kv_bucket)

    # -- prefill --------------------------------------------------------------------------------
    def _prefill(self, slots: list[int], prompts: list[list[int]]) -> torch.Tensor:
        """Prefill prompts into slots (chunked by the token budget); returns last-token logits
        in the given order."""
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
            logits = self._forward(toks, positions, slot_t, T, last_idx=lens - 1)
            for r, j in enumerate(idx):
                out[j] = logits[r]
            start = end
        return torch.stack(out)  # type: ignore[arg-type]

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
                if free and waiting:
                    take = [waiting.popleft() for _ in range(min(len(free), len(waiting)))]
                    slots = free[:len(take)]
                    logits = self._prefill(slots, [list(prompt_ids[j]) for j in take])
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
                    continue  # refill again if requests finished on their first token
                active = [s for s in range(self.slots) if slot_req[s] != -1]
                if not active:
                    break
                k = min(self.sync_every, max(budgets[slot_req[s]] - len(outs[slot_req[s]]) for s in active))
                top = max(slot_pos[s] for s in active)
                for step in range(k):
                    logits = self._decode_logits(self._bucket(top + step + 1))
                    nxt = sample_next(logits, temperature, top_p, gen)
                    hist[:, step] = nxt
                    self.tok_buf.copy_(nxt)
                    self.pos_buf.add_(1).clamp_(max=self.max_seq_len - 1)
                new = hist[:, :k].tolist()
                for s in active:
                    slot_pos[s] += k
                    push(s, new[s])
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
    graphs read the model's weights in place, so optimizer steps are seen). Stop strings need
    `tokenizer`. `max_new_tokens` (per prompt) overrides `settings.max_new_tokens`.
    """
    budgets = list(max_new_tokens) if max_new_tokens is not None else [settings.max_new_tokens] * len(prompt_ids)
    if engine is None:
        need = max((len(p) + m for p, m in zip(prompt_ids, budgets)), default=1)
        engine = GenerationEngine(model, max_batch_size=min(max_batch_size, max(1, len(prompt_ids))),
                                  max_seq_len=need, **engine_kwargs)
    stop_fn = make_stop_fn(tokenizer, settings.stop_strings) if tokenizer is not None else None
    return engine.generate(prompt_ids, budgets, temperature=settings.temperature, top_p=settings.top_p,
                           seed=settings.seed, eos_token_ids=eos_token_ids, stop_fn=stop_fn,
                           show_progress=show_progress)


@torch.inference_mode()
def generate_completions(model, tokenizer, prompts: list[str], settings: GenerationSettings,
                         batch_size: int = 16, show_progress: bool = True,
                         use_engine: bool | None = None, max_batch_size: int = 256) -> list[str]:
    """Generate one completion per prompt.

    Prompts are already-rendered chat text; the returned strings hold only the new text, cut at
    the first stop string. On CUDA (or with use_engine=True) this runs the static-cache,
    CUDA-graph, continuous-batching engine with `max_batch_size` slots; on CPU it falls back to HF
    `generate` with batches of `batch_size` (left padding).
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    eos_ids = eos_token_ids_of(model, tokenizer)
    if use_engine is None:
        use_engine = device.type == "cuda"
    if use_engine:
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        new = generate_token_ids(model, ids, settings, eos_token_ids=eos_ids, tokenizer=tokenizer,
                                 max_batch_size=max_batch_size, show_progress=show_progress)
        return [_truncate_at_stop(tokenizer.decode(t, skip_special_tokens=True), settings.stop_strings)
                for t in new]

    tokenizer.padding_side = "left"
    torch.manual_seed(settings.seed)
    do_sample = settings.temperature > 0
    outputs: list[str] = []
    batches = range(0, len(prompts), batch_size)
    for start in tqdm(batches, desc="generate", disable=not show_progress):
        chunk = prompts[start:start + batch_size]
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
        for row in new_tokens:
            text = tokenizer.decode(row, skip_special_tokens=True)
            outputs.append(_truncate_at_stop(text, settings.stop_strings))
    return outputs
