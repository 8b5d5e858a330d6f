"""Generation benchmark: HF `generate` vs tinyreason's engine, side by side, one GPU.

Model: random-weight Qwen2.5-1.5B (config written below), bf16, SDPA. Prompts: random token ids
whose lengths are GSM8K-test prompt lengths (question words x 1.3 + 30 template tokens; list in
bench/results/generation-gsm8k-prompt-lengths.json). Random weights rarely emit EOS, so EOS is
ignored: the batch runs generate exactly `--new-tokens` per prompt (HF: eos_token_id=None); the
1319-prompt workload runs once with every request to 512 and once with per-request lengths drawn
from a realistic answer-length distribution (lognormal, median 250 tokens, sigma 0.45, cut to
[16, 512]) to show continuous batching.

Redo:  PYTHONUNBUFFERED=1 python bench/generation.py --out bench/results
Quick: python bench/generation.py --quick   (64 new tokens, for smoke tests)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinyreason.generation import GenerationEngine  # noqa: E402

HERE = Path(__file__).resolve().parent
LENGTHS = HERE / "results" / "generation-gsm8k-prompt-lengths.json"


def qwen25_15b_config():
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
        rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu",
        use_sliding_window=False, attn_implementation="sdpa", torch_dtype="bfloat16",
        bos_token_id=151643, eos_token_id=151645,
    )


def build_model(device="cuda"):
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(qwen25_15b_config())
    model = model.to(torch.bfloat16).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def make_prompts(lengths, seed=0, vocab=151000):
    rng = random.Random(seed)
    return [[rng.randrange(100, vocab) for _ in range(n)] for n in lengths]


def sync():
    torch.cuda.synchronize()


def peak_reset():
    sync()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def peak_gib():
    return torch.cuda.max_memory_allocated() / 2**30


@torch.inference_mode()
def run_hf(model, prompts, new_tokens):
    T = max(map(len, prompts))
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, T - len(p):] = torch.tensor(p)
        mask[r, T - len(p):] = 1
    ids, mask = ids.cuda(), mask.cuda()
    peak_reset()
    t0 = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    sync()
    dt_ = time.perf_counter() - t0
    new = out[:, T:].tolist()
    assert all(len(x) == new_tokens for x in new)
    return new, dt_, peak_gib()


def run_engine(model, prompts, budgets, slots, warm=True, **kw):
    """Returns tokens, seconds (engine build + graph capture excluded if warm), build seconds, peak."""
    peak_reset()
    t0 = time.perf_counter()
    max_len = max(len(p) + b for p, b in zip(prompts, budgets))
    kw.setdefault("fuse_weights", True)
    eng = GenerationEngine(model, max_batch_size=slots, max_seq_len=max_len, **kw)
    if warm:
        eng.warmup()
    sync()
    t1 = time.perf_counter()
    out = eng.generate(prompts, budgets)
    sync()
    t2 = time.perf_counter()
    return out, t2 - t1, t1 - t0, peak_gib(), eng


def first_divergence(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def div_stats(engine_rows, hf_rows):
    d = [first_divergence(a, b) for a, b in zip(engine_rows, hf_rows)]
    n = len(hf_rows[0])
    return {"min": min(d), "median": statistics.median(d), "mean": round(statistics.mean(d), 1),
            "rows_identical": sum(x == n for x in d), "rows": len(d)}


def measure_device():
    """Device-to-device copy bandwidth (read+write bytes) and bf16 matmul rate."""
    x = torch.empty(2 * 2**30 // 2, dtype=torch.bfloat16, device="cuda").normal_()
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    sync()
    ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ev0.record()
    for _ in range(10):
        y.copy_(x)
    ev1.record()
    sync()
    bw = 10 * 2 * x.numel() * 2 / (ev0.elapsed_time(ev1) / 1e3)
    del x, y
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        a @ b
    ev0.record()
    for _ in range(10):
        a @ b
    ev1.record()
    sync()
    flops = 10 * 2 * 8192**3 / (ev0.elapsed_time(ev1) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return bw, flops


def floor_tok_s(model, prompt_lens, new_tokens, bw, flops):
    """Lower bound on time for a batch generating `new_tokens` each: per step, read all weights
    once + each request's K/V over its current context (bandwidth) vs 2*params FLOPs per token."""
    params = sum(p.numel() for p in model.parameters())
    wbytes = params * 2
    cfg = model.config
    kv_tok = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 2
    total = 0.0
    for t in range(new_tokens):
        byts = wbytes + sum(n + t for n in prompt_lens) * kv_tok
        fl = 2 * params * len(prompt_lens)
        total += max(byts / bw, fl / flops)
    return len(prompt_lens) * new_tokens / total


@torch.inference_mode()
def step_variants(model, slots, ctx, L=768, profile=False):
    """Decode-step time (CUDA graph replays, events) of engine variants with every slot at
    position `ctx`; returns {variant: ms}."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    out = {}
    variants = [("default", dict()),  # flash (grouped heads) + compile + fused weights
                ("flash-ungrouped", dict(flash_grouped=False)),
                ("unfused", dict(fuse_weights=False)),
                ("no-compile", dict(compile=False)),
                ("sdpa", dict(attn_impl="sdpa"))]
    for name, kw in variants:
        t0 = time.perf_counter()
        try:
            kw = {"fuse_weights": True, **kw}
            eng = GenerationEngine(model, max_batch_size=slots, max_seq_len=L, **kw)
        except Exception as exc:  # noqa: BLE001
            print(f"variant {name}: {exc}")
            continue
        eng.pos_buf.fill_(ctx)
        kv = eng._bucket(ctx + 1)
        eng._capture(kv, True)
        sync()
        build = time.perf_counter() - t0
        ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        ms = []
        for _ in range(3):
            eng.pos_buf.fill_(ctx)
            ev0.record()
            for _ in range(20):
                eng._decode(kv, True)
            ev1.record()
            sync()
            ms.append(ev0.elapsed_time(ev1) / 20)
        # host cost of one replay call (GPU busy, so this is the launch alone)
        eng.pos_buf.fill_(ctx)
        sync()
        t1 = time.perf_counter()
        for _ in range(5):
            eng._decode(kv, True)
        host = (time.perf_counter() - t1) / 5 * 1e3
        sync()
        out[name] = min(ms)
        print(f"step B={slots} ctx={ctx} {name:16s} {min(ms):6.2f} ms  ({slots/min(ms)*1e3:,.0f} tok/s; "
              f"host per replay {host:.2f} ms; build+compile+capture {build:.1f}s)")
        if profile and name == "default":
            with tprofile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    eng._decode(kv, True)
                sync()
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
        del eng
        torch.cuda.empty_cache()
    return out


@torch.inference_mode()
def prefill_bench(model, lengths, profile=False):
    """Time one prefill call (GPU events and host wall) for n prompts of GSM8K lengths."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    out = {}
    for n in (48, 256):
        for fused in (True,):
            eng = GenerationEngine(model, max_batch_size=n, max_seq_len=768, fuse_weights=fused)
            prompts = make_prompts(lengths[:n], seed=n)
            slots = list(range(n))
            for _ in range(2):
                eng._prefill(slots, prompts)
            sync()
            ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0 = time.perf_counter()
            ev0.record()
            for _ in range(3):
                eng._prefill(slots, prompts)
            ev1.record()
            host = (time.perf_counter() - t0) / 3 * 1e3
            sync()
            wall = (time.perf_counter() - t0) / 3 * 1e3
            gpu = ev0.elapsed_time(ev1) / 3
            toks = sum(map(len, prompts))
            out[str(n)] = {"wall_ms": round(wall, 1), "gpu_ms": round(gpu, 1), "host_ms": round(host, 1), "tokens": toks}
            print(f"prefill n={n} ({toks} tokens, fused={fused}): wall {wall:.1f} ms, gpu {gpu:.1f} ms, "
                  f"host launch {host:.1f} ms, {toks/wall*1e3:,.0f} tok/s")
            if profile and n == 48:
                with tprofile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    eng._prefill(slots, prompts)
                    sync()
                print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))
                print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=60))
            del eng
            torch.cuda.empty_cache()
    return out


@torch.inference_mode()
def check_numerics(model, prompts):
    """Logits of the first decode step after prefill: engine variants vs HF forward (bf16)."""
    toks = []
    ref = []
    res = {}
    for p in prompts:
        lg = model(input_ids=torch.tensor([p], device="cuda")).logits[0, -1].float()
        t = int(lg.argmax())
        toks.append(t)
        ref.append(model(input_ids=torch.tensor([p + [t]], device="cuda")).logits[0, -1].float())
    ref = torch.stack(ref)
    # bf16 noise floor: HF's own cached decode step vs its uncached forward
    hf_c = []
    for p, t in zip(prompts, toks):
        o = model(input_ids=torch.tensor([p], device="cuda"), use_cache=True)
        hf_c.append(model(input_ids=torch.tensor([[t]], device="cuda"), past_key_values=o.past_key_values,
                          use_cache=True).logits[0, -1].float())
    rel = float((torch.stack(hf_c) - ref).norm() / ref.norm())
    res["hf_cached_decode"] = rel
    print(f"decode-step logits vs HF forward, HF cached decode: rel err {rel:.2e}")
    for name, kw in [("graph+compile+flash", {}), ("eager-sdpa", dict(use_cuda_graph=False, compile=False, attn_impl="sdpa"))]:
        eng = GenerationEngine(model, max_batch_size=len(prompts), max_seq_len=512, **kw)
        slots = list(range(len(prompts)))
        eng._prefill(slots, prompts)
        eng.tok_buf.copy_(torch.tensor(toks, device="cuda"))
        eng.pos_buf.copy_(torch.tensor([len(p) for p in prompts], device="cuda"))
        lg = eng._decode(eng._bucket(max(len(p) for p in prompts) + 1), False).float()
        rel = float((lg - ref).norm() / ref.norm())
        res[name] = rel
        print(f"decode-step logits vs HF forward, {name}: rel err {rel:.2e} (attn_impl={eng.attn_impl}, "
              f"grouped={eng.flash_grouped}, packed prefill={eng.prefill_packed}, compile={eng.compile})")
        del eng
    return res


@torch.inference_mode()
def check_fp32_exact():
    """Small random Qwen2 in float32 on the GPU (TF32 off): the engine's CUDA-graph + compiled
    decode (SDPA path; flash needs bf16/fp16) vs HF generate, greedy tokens."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(1)
    cfg = Qwen2Config(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, rope_theta=1e6, tie_word_embeddings=True,
                      initializer_range=0.1, attn_implementation="sdpa")
    with torch.device("cuda"):
        m = Qwen2ForCausalLM(cfg).float().eval()
    m.generation_config.eos_token_id = None
    rng = random.Random(5)
    prompts = [[rng.randrange(3, 4096) for _ in range(rng.randint(3, 60))] for _ in range(24)]
    T = max(map(len, prompts))
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, T - len(p):] = torch.tensor(p)
        mask[r, T - len(p):] = 1
    ref = m.generate(input_ids=ids.cuda(), attention_mask=mask.cuda(), max_new_tokens=64, do_sample=False,
                     pad_token_id=0)[:, T:].tolist()
    got = GenerationEngine(m, max_batch_size=8, max_seq_len=128, attn_impl="sdpa", kv_bucket=32).generate(prompts, 64)
    d = div_stats(got, ref)
    print(f"fp32 GPU: engine (graph+compile, 8 slots, 24 prompts) vs HF generate: {d}")
    torch.backends.cuda.matmul.allow_tf32 = True
    del m
    torch.cuda.empty_cache()
    return d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--workload-slots", default="256,512")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--hf-new-tokens", type=int, default=None, help="HF runs shorter (default: same)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workload-only", action="store_true")
    ap.add_argument("--profile", action="store_true", help="print a kernel table of eager decode steps")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    args = ap.parse_args()
    if args.quick:
        args.new_tokens = 64
    hf_new = args.hf_new_tokens or args.new_tokens
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name()
    lengths_all = json.loads(LENGTHS.read_text())["lengths"]
    rng = random.Random(0)
    shuffled = lengths_all[:]
    rng.shuffle(shuffled)
    res = {"gpu": gpu, "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "torch": torch.__version__, "new_tokens": args.new_tokens,
           "command": "PYTHONUNBUFFERED=1 python bench/generation.py " + " ".join(sys.argv[1:]),
           "stopping": "EOS ignored; every request generates exactly its budget", "batches": {}}
    import transformers
    res["transformers"] = transformers.__version__
    print(f"GPU {gpu}  torch {torch.__version__}  transformers {transformers.__version__}")

    bw, flops = measure_device()
    res["device_copy_GBps"] = round(bw / 1e9, 1)
    res["device_bf16_matmul_TFLOPs"] = round(flops / 1e12, 1)
    print(f"measured: copy {bw/1e9:.0f} GB/s, bf16 matmul {flops/1e12:.0f} TFLOP/s")

    t0 = time.perf_counter()
    model = build_model()
    print(f"model built in {time.perf_counter()-t0:.1f}s, "
          f"{sum(p.numel() for p in model.parameters())/1e9:.3f}B params")

    if args.workload_only:
        args.batches = ""
    else:
        run_checks(args, res, model, shuffled)
    run_batches(args, res, model, shuffled, bw, flops, hf_new)
    run_workload(args, res, model, lengths_all)
    write_results(args, res, out_dir, gpu)


def run_checks(args, res, model, shuffled):
    res["fp32_engine_vs_hf_first_divergence"] = check_fp32_exact()
    res["logits_rel_err_vs_hf"] = check_numerics(model, make_prompts(shuffled[:8], seed=98))
    res["prefill"] = prefill_bench(model, shuffled, profile=args.profile)
    res["step_ms"] = {}
    for B in [int(x) for x in args.batches.split(",")]:
        res["step_ms"][str(B)] = step_variants(model, B, ctx=350, profile=args.profile and B == 256)

    # CUDA graph + compiled decode vs the eager, uncompiled engine (same attention): compiled
    # elementwise kernels round differently in bf16, so this reports where greedy tokens part.
    chk = make_prompts(shuffled[:8], seed=99)
    g = GenerationEngine(model, max_batch_size=8, max_seq_len=400).generate(chk, 160)
    e = GenerationEngine(model, max_batch_size=8, max_seq_len=400, use_cuda_graph=False).generate(chk, 160)
    res["graph_equals_eager"] = g == e
    print(f"graph+compile decode == eager uncompiled decode (same attention): {g == e} (first divergence {div_stats(g, e)})")
    torch.cuda.empty_cache()


def run_batches(args, res, model, shuffled, bw, flops, hf_new):
    for B in [int(x) for x in args.batches.split(",") if x]:
        lens = shuffled[:B]
        prompts = make_prompts(lens, seed=B)
        r = {"batch": B, "prompt_tokens_mean": round(sum(lens) / B, 1)}
        toks, secs, build, peak, eng = run_engine(model, prompts, [args.new_tokens] * B, slots=B)
        n = B * args.new_tokens
        r["engine"] = {"seconds": round(secs, 3), "tok_s": round(n / secs), "peak_GiB": round(peak, 2),
                       "build_and_capture_s": round(build, 2), "graphs": len(eng._graphs)}
        del eng
        print(f"[B={B}] engine: {n/secs:,.0f} tok/s ({secs:.2f}s, build+capture {build:.1f}s, peak {peak:.1f} GiB)")
        fl = floor_tok_s(model, lens, args.new_tokens, bw, flops)
        r["floor_tok_s"] = round(fl)
        print(f"[B={B}] floor (weights + live KV per step at measured copy BW, or FLOPs): {fl:,.0f} tok/s")
        if not args.skip_hf:
            hf_toks, hsecs, hpeak = run_hf(model, prompts, hf_new)
            hn = B * hf_new
            r["hf_generate"] = {"seconds": round(hsecs, 2), "tok_s": round(hn / hsecs), "peak_GiB": round(hpeak, 2),
                                "new_tokens": hf_new}
            r["speedup"] = round((n / secs) / (hn / hsecs), 2)
            r["greedy_first_divergence_vs_hf"] = div_stats([t[:hf_new] for t in toks], hf_toks)
            print(f"[B={B}] HF generate: {hn/hsecs:,.0f} tok/s ({hsecs:.1f}s, peak {hpeak:.1f} GiB)  "
                  f"ratio {r['speedup']}x  first divergence {r['greedy_first_divergence_vs_hf']}")
        res["batches"][str(B)] = r
        torch.cuda.empty_cache()



def run_workload(args, res, model, lengths_all):
    # Full GSM8K-test workload: 1319 prompts, outputs capped at 512.
    prompts = make_prompts(lengths_all, seed=1319)
    lr = random.Random(7)
    realistic = [max(16, min(512, round(math.exp(lr.gauss(math.log(250), 0.45))))) for _ in prompts]
    cap = args.new_tokens
    realistic = [min(cap, x) for x in realistic]
    res["workload"] = {"prompts": len(prompts), "cap": cap,
                       "realistic_lengths": {"mean": round(statistics.mean(realistic), 1),
                                             "at_cap": sum(x == cap for x in realistic)}}
    for S in [int(x) for x in args.workload_slots.split(",")]:
        for name, budgets in (("all_to_cap", [cap] * len(prompts)), ("realistic", realistic)):
            toks, secs, build, peak, eng = run_engine(model, prompts, budgets, slots=S, warm=False)
            stats = {k: round(v, 3) for k, v in eng.stats.items()}
            del eng
            total = build + secs
            ntok = sum(map(len, toks))
            assert ntok == sum(budgets)
            res["workload"][f"{name}_slots{S}"] = {"wall_s": round(total, 2), "build_s": round(build, 2),
                                                   "tokens": ntok, "tok_s": round(ntok / total),
                                                   "peak_GiB": round(peak, 2), "engine_stats": stats}
            print(f"[1319 {name} slots={S}] wall {total:.2f}s (incl. build {build:.2f}s, graph capture "
                  f"on first use), {ntok:,} tokens, {ntok/total:,.0f} tok/s, peak {peak:.1f} GiB; {stats}")
            torch.cuda.empty_cache()



def write_results(args, res, out_dir, gpu):
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d")
    tag = "quick" if args.quick else stamp
    jpath = out_dir / f"generation-{tag}.json"
    jpath.write_text(json.dumps(res, indent=2))
    md = [f"# Generation benchmark ({gpu}, {res['date_utc']})", "",
          f"torch {res['torch']}, transformers {res['transformers']}; random Qwen2.5-1.5B bf16; "
          f"greedy; {args.new_tokens} new tokens; {res['stopping']}.",
          f"Measured device: copy {res['device_copy_GBps']} GB/s, bf16 matmul {res['device_bf16_matmul_TFLOPs']} TFLOP/s.",
          "", "| batch | HF generate tok/s | engine tok/s | ratio | floor tok/s | HF peak GiB | engine peak GiB | engine build+compile+capture s | first divergence (min/median) |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for B, r in res["batches"].items():
        hf = r.get("hf_generate", {})
        dv = r.get("greedy_first_divergence_vs_hf", {})
        md.append(f"| {B} | {hf.get('tok_s', '-')} | {r['engine']['tok_s']} | {r.get('speedup', '-')} | "
                  f"{r['floor_tok_s']} | {hf.get('peak_GiB', '-')} | {r['engine']['peak_GiB']} | "
                  f"{r['engine']['build_and_capture_s']} | "
                  f"{dv.get('min', '-')}/{dv.get('median', '-')} |")
    cap = res["workload"]["cap"]
    md += ["", f"1319-prompt GSM8K-test workload (cap {cap}; realistic lengths mean "
               f"{res['workload']['realistic_lengths']['mean']}, {res['workload']['realistic_lengths']['at_cap']} at cap), "
               "wall-clock incl. engine build and CUDA-graph capture:", "",
           "| run | wall s | tokens | tok/s | peak GiB |", "| --- | --- | --- | --- | --- |"]
    for k, v in res["workload"].items():
        if isinstance(v, dict) and "wall_s" in v:
            md.append(f"| {k} | {v['wall_s']} | {v['tokens']} | {v['tok_s']} | {v['peak_GiB']} |")
    md += ["", f"Redo: `{res['command']}`", ""]
    (out_dir / f"generation-{tag}.md").write_text("\n".join(md))
    print("\n".join(md))
    print(f"wrote {jpath}")


if __name__ == "__main__":
    main()
