"""Generation benchmark of the paged engine, one GPU, one call (issue 15).

Model: random-weight Qwen2.5-1.5B (the architecture of Qwen2.5-1.5B-Instruct and
DeepSeek-R1-Distill-Qwen-1.5B), bf16. Random weights never choose to stop, so EOS is off and each
request generates exactly its drawn length: the length distributions below stand in for a real
model's. Prompts are random token ids with the benchmarks' prompt lengths
(bench/results/generation-*-prompt-lengths.json).

Workloads:
  a  short:     1,319 GSM8K prompts, greedy, cap 512 (every request to 512, and realistic
                lengths); the paged engine vs the static-cache engine it replaced (commit da945d4,
                read from .baseline/static_engine.py, made by `git show da945d4:tinyreason/generation.py`).
  b  reasoning: MATH500's 500 prompts, cap 32,768, T 0.6, top_p 0.95, lengths ~ LENGTHS['math500'].
  c  AIME24:    30 prompts x 16 samples (forked from one prefill each), same settings, LENGTHS['aime24'].
  d  HF:        HF `generate` (sampled, static batch) on a slice of (b), and the engine on the same slice.
Floor: for every decode step the engine ran, (weight bytes + the live K/V it must read) over the
measured copy bandwidth, plus prompt FLOPs over the measured matmul rate; `floor_ratio` = tok/s / floor tok/s.

Redo:  python3 bench/generation.py --only check,a,d,b --out bench/results
       python3 bench/generation.py --only c --out bench/results
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import QWEN25_15B, random_qwen2  # noqa: E402
from tinyreason.generation import GenerationEngine  # noqa: E402
from tinyreason.generation.attention import CudaAttention, DecodeBatch, PrefillBatch, TorchAttention  # noqa: E402

RESULTS = ROOT / "bench" / "results"
# Output lengths of R1-distilled 1.5B models at a 32k cap (T 0.6): lognormal, cut to [64, cap].
# Sources and the fit: bench/results/generation-lengths.md.
LENGTHS = {"math500": {"median": 3000, "sigma": 1.1}, "aime24": {"median": 12300, "sigma": 0.8},
           "gsm8k": {"median": 250, "sigma": 0.45}}


def qwen25_15b(device="cuda"):
    model = random_qwen2(QWEN25_15B, device, torch.bfloat16, use_sliding_window=False,
                         attn_implementation="sdpa").eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def prompts_of(lengths, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(100, 151000) for _ in range(n)] for n in lengths]


def draw_lengths(n, dist, cap, seed):
    rng = random.Random(seed)
    return [max(64, min(cap, int(rng.lognormvariate(math.log(dist["median"]), dist["sigma"])))) for _ in range(n)]


def sync():
    torch.cuda.synchronize()


def measure_device():
    """Copy bandwidth (bytes read + written per second) and bf16 matmul FLOP/s."""
    x = torch.empty(2**30, dtype=torch.bfloat16, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    sync()
    t = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    sync()
    bw = 10 * 2 * x.numel() * 2 / (time.perf_counter() - t)
    del x, y
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        a @ a
    sync()
    t = time.perf_counter()
    for _ in range(10):
        a @ a
    sync()
    flops = 10 * 2 * 8192**3 / (time.perf_counter() - t)
    del a
    torch.cuda.empty_cache()
    return bw, flops


def floor_seconds(model, stats, prompt_tokens, bw, flops):
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    kv_token = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 2
    decode = (stats["decode_steps"] * params * 2 + stats["decode_kv_tokens"] * kv_token) / bw
    return decode + 2 * params * prompt_tokens / flops


def run(model, prompts, budgets, bw, flops, temperature=0.0, top_p=1.0, seeds=None, repeat=1, **kw):
    """Engine build + `repeat` generate calls; the last one timed as `s` (the first includes
    graph captures when repeat == 1)."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    kw.setdefault("fuse_weights", True)
    eng = GenerationEngine(model, max_model_len=max(len(p) + b for p, b in zip(prompts, budgets)), **kw)
    build = time.perf_counter() - t0
    for i in range(repeat):
        sync()
        t1 = time.perf_counter()
        out = eng.generate(prompts, budgets, temperature=temperature, top_p=top_p, seed=1, seeds=seeds)
        sync()
        secs = time.perf_counter() - t1
    n_new = sum(map(len, out))
    assert n_new == sum(budgets), (n_new, sum(budgets))
    floor = floor_seconds(model, eng.stats, sum(map(len, prompts)), bw, flops)
    res = {"requests": len(prompts), "new_tokens": n_new, "s": round(secs, 2), "build_s": round(build, 2),
           "tok_s": round(n_new / secs), "floor_tok_s": round(n_new / floor), "floor_ratio": round(floor / secs, 3),
           "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
           "kv_cache_gib": round(eng.cache_bytes / 2**30, 1), "kv_blocks": eng.num_blocks,
           "block_size": eng.block_size, "max_num_seqs": eng.max_num_seqs,
           "stats": {k: round(v, 2) for k, v in eng.stats.items()}}
    del eng
    return out, res


def rotary(positions, dim=128, theta=1e6):
    """HF-layout cos, sin [N, dim] (bf16) at `positions`."""
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, device=positions.device).float() / dim)
    ang = positions.float()[:, None] * inv[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().to(torch.bfloat16), ang.sin().to(torch.bfloat16)


def check_attention():
    """CudaAttention (FlashAttention prefill over a cached prefix, Triton decode with 1 and 8
    splits) against the PyTorch reference on the same paged cache."""
    torch.manual_seed(0)
    H, HKV, D, BS, NB = 12, 2, 128, 64, 64
    dev, dt_ = "cuda", torch.bfloat16
    kc = torch.randn(NB, HKV, BS, D, device=dev, dtype=dt_)
    vc = torch.randn_like(kc)
    ref, fast = TorchAttention(D ** -0.5, H, HKV), CudaAttention(D ** -0.5, H, HKV)
    out = {}
    lens = [700, 1, 64, 129, 767]
    table = torch.randperm(NB - 1, device=dev)[:len(lens) * 12].view(len(lens), 12).to(torch.int32) + 1
    lens_t = torch.tensor(lens, device=dev, dtype=torch.int32)
    pos = lens_t.long() - 1
    block = table.gather(1, (pos // BS)[:, None])[:, 0].long()
    q = torch.randn(len(lens), H, D, device=dev, dtype=dt_)
    k, v = torch.randn(len(lens), HKV, D, device=dev, dtype=dt_), torch.randn(len(lens), HKV, D, device=dev, dtype=dt_)
    cos, sin = rotary(pos)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    want = ref.decode(q, k, v, cos, sin, kc_ref, vc_ref, DecodeBatch(block, pos % BS, table, lens_t, 1)).float()
    for splits in (1, 2, 8, 32):
        kc_new, vc_new = kc.clone(), vc.clone()
        got = fast.decode(q, k, v, cos, sin, kc_new, vc_new, DecodeBatch(block, pos % BS, table, lens_t, splits)).float()
        out[f"decode_splits{splits}_max_abs_err"] = (got - want).abs().max().item()
    out["decode_k_cache_max_abs_err"] = (kc_new.float() - kc_ref.float()).abs().max().item()
    out["decode_v_cache_equal"] = bool(torch.equal(vc_new, vc_ref))
    # prefill: request 0 has 100 cached tokens and 37 new, request 1 has 0 cached and 20 new
    cached, new = [100, 0], [37, 20]
    blk, off, cblk, coff = [], [], [], []
    for r, (c, n) in enumerate(zip(cached, new)):
        for p_ in range(c, c + n):
            blk.append(int(table[r, p_ // BS]))
            off.append(p_ % BS)
        for p_ in range(c + n):
            cblk.append(int(table[r, p_ // BS]))
            coff.append(p_ % BS)
    t = lambda x, d=torch.long: torch.tensor(x, device=dev, dtype=d)  # noqa: E731
    batch = PrefillBatch(t(blk), t(off), t([0, 37, 57], torch.int32), t([0, 137, 157], torch.int32), 37, 137, t(cblk), t(coff))
    qp = torch.randn(57, H, D, device=dev, dtype=dt_)
    kp, vp = torch.randn(57, HKV, D, device=dev, dtype=dt_), torch.randn(57, HKV, D, device=dev, dtype=dt_)
    cos, sin = rotary(torch.tensor([*range(100, 137), *range(20)], device=dev))
    want = ref.prefill(qp, kp, vp, cos, sin, kc.clone(), vc.clone(), batch).float()
    got = fast.prefill(qp, kp, vp, cos, sin, kc.clone(), vc.clone(), batch).float()
    out["prefill_cached_prefix_max_abs_err"] = (got - want).abs().max().item()
    return out


def check_engine(model):
    """Greedy: CUDA graphs + Triton/Flash vs the eager PyTorch-reference engine, and vs HF generate
    (bf16: first-divergence positions; exact agreement is not expected)."""
    prompts = prompts_of([37, 180, 5, 300, 64, 90, 12, 250], seed=5)
    fast = GenerationEngine(model, max_num_seqs=8, max_model_len=600, prefill_tokens=256).generate(prompts, 128)
    eager = GenerationEngine(model, max_num_seqs=8, max_model_len=600, block_size=8, use_cuda_graph=False,
                             compile=False, prefill_tokens=256)
    eager.runner.attention = TorchAttention(eager.runner.attention.scale, 12, 2)
    slow = eager.generate(prompts, 128)
    first = lambda a, b: next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))  # noqa: E731
    return {"graphs_vs_eager_first_divergence": [first(a, b) for a, b in zip(fast, slow)], "new_tokens": 128}


def load_static_engine():
    path = ROOT / ".baseline" / "static_engine.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("static_engine", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["static_engine"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod.GenerationEngine


def workload_a(model, bw, flops):
    lengths = json.loads((RESULTS / "generation-gsm8k-prompt-lengths.json").read_text())
    lengths = lengths["lengths"] if isinstance(lengths, dict) else lengths
    prompts = prompts_of(lengths, seed=0)
    out = {}
    for name, budgets in (("cap512", [512] * len(prompts)),):
        Static = load_static_engine()
        if Static is not None:  # the engine this one replaced, first, same call, same prompts
            eng = Static(model, max_batch_size=256, max_seq_len=max(len(p) for p in prompts) + 512, fuse_weights=True)
            eng.warmup()
            for _ in range(2):
                sync()
                t = time.perf_counter()
                got = eng.generate(prompts, budgets)
                sync()
                secs = time.perf_counter() - t
            out[f"static_{name}"] = {"s": round(secs, 2), "tok_s": round(sum(map(len, got)) / secs)}
            del eng
            torch.cuda.empty_cache()
        _, res = run(model, prompts, budgets, bw, flops, repeat=2, max_num_seqs=256)
        out[f"paged_{name}"] = res
    return out


def workload_reasoning(model, bench, samples, bw, flops, max_num_seqs, scale=1.0):
    lengths = json.loads((RESULTS / "generation-reasoning-prompt-lengths.json").read_text())[bench]
    lengths = lengths[:max(1, int(len(lengths) * scale))]
    prompts = [p for p in prompts_of(lengths, seed=1) for _ in range(samples)]
    budgets = draw_lengths(len(prompts), LENGTHS[bench], 32768, seed=2)
    _, res = run(model, prompts, budgets, bw, flops, temperature=0.6, top_p=0.95, max_num_seqs=max_num_seqs)
    res["lengths"] = {"distribution": LENGTHS[bench], "mean": round(sum(budgets) / len(budgets)),
                      "at_cap": sum(b == 32768 for b in budgets)}
    free, total = torch.cuda.mem_get_info()
    res["card_gib"] = round(total / 2**30, 1)
    return res


@torch.inference_mode()
def workload_hf(model, bw, flops, n=32, cap=1024):
    lengths = json.loads((RESULTS / "generation-reasoning-prompt-lengths.json").read_text())["math500"][:n]
    prompts = prompts_of(lengths, seed=1)
    T = max(lengths)
    ids = torch.zeros(n, T, dtype=torch.long)
    mask = torch.zeros(n, T, dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, T - len(p):] = torch.tensor(p)
        mask[r, T - len(p):] = 1
    sync()
    t = time.perf_counter()
    model.generate(input_ids=ids.cuda(), attention_mask=mask.cuda(), max_new_tokens=cap, do_sample=True,
                   temperature=0.6, top_p=0.95, top_k=None, eos_token_id=None, pad_token_id=0)
    sync()
    hf_s = time.perf_counter() - t
    _, eng = run(model, prompts, [cap] * n, bw, flops, temperature=0.6, top_p=0.95, repeat=2, max_num_seqs=n)
    return {"requests": n, "new_tokens_each": cap, "hf_s": round(hf_s, 2), "hf_tok_s": round(n * cap / hf_s),
            "engine": eng, "speedup": round(hf_s / eng["s"], 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="check,a,b,c,d")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the (b)/(c) prompts (smoke runs)")
    ap.add_argument("--scale-c", type=float, default=1.0, help="fraction of the (c) prompts")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    only = args.only.split(",")
    model = qwen25_15b()
    bw, flops = measure_device()
    res = {"date": dt.date.today().isoformat(), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
           "copy_bandwidth_tb_s": round(bw / 1e12, 2), "matmul_tflop_s": round(flops / 1e12),
           "command": "python3 bench/generation.py " + " ".join(sys.argv[1:])}
    steps = {"check": lambda: {"attention": check_attention(), "engine": check_engine(model)},
             "a": lambda: workload_a(model, bw, flops),
             "d": lambda: workload_hf(model, bw, flops),
             "b": lambda: workload_reasoning(model, "math500", 1, bw, flops, 512, args.scale),
             "c": lambda: workload_reasoning(model, "aime24", 16, bw, flops, 480, args.scale_c)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"generation-{res['date']}-{args.tag or '-'.join(only)}.json"
    for key in only:
        t = time.perf_counter()
        try:
            res[key] = steps[key]()
        except Exception as e:  # noqa: BLE001 - record it and go on to the next workload
            import traceback

            traceback.print_exc()
            res[key] = {"error": f"{type(e).__name__}: {e}"[:500]}
            if "CUDA error" in str(e):
                break
        res[key + "_wall_s"] = round(time.perf_counter() - t, 1)
        print(key, json.dumps(res[key]), flush=True)
        (out / name).write_text(json.dumps(res, indent=1))
    print("wrote", out / name)


if __name__ == "__main__":
    main()
