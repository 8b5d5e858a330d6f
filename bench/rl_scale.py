"""RL at Tina's scale (issue 23), one GPU: decode latency vs the memory floor, the sampler, a step
profile, transformers' continuous batching as the library anchor, the 32k MATH500 run, and the GRPO
steps (through bench/grpo.py), the baseline commit beside each in the same call.

    python3 bench/rl_scale.py --jobs check,sampler,decode,decode@base,generate_batch,profile,math500 \
        --base .base --out $OUT
    python3 bench/rl_scale.py --jobs grpo8,grpo8@base,grpo8_trl_cb,grpo8_trl_hf,open_rs2,open_rs2@base \
        --base .base --out $OUT

`.base` is the baseline commit's tree (`git worktree add .base 75d1b54`, or `git archive`): a job
`NAME@base` imports its tinyreason instead of this checkout's, with this harness. Each job runs in
its own process under its own time limit; after each, the results file
rl-scale-<date>-<gpu>.json is rewritten in --out (starting from bench/results/'s copy, so calls add
up). Model: random-weight Qwen2.5-1.5B (bf16, 151,936-row embedding, tied), never stops early.
Floor: (weight bytes + the K/V bytes a step reads) / measured copy bandwidth, per decode step.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
KV_BYTES_PER_TOKEN = 28 * 2 * 2 * 128 * 2  # layers x (K, V) x KV heads x head_dim x bf16
# (batch, prompt, new tokens, sampled): the decode-latency table
DECODE_ROWS = [(1, 512, 512, True), (8, 512, 512, True), (32, 512, 512, True), (64, 512, 512, True),
               (64, 512, 512, False), (256, 512, 512, True), (32, 8192, 512, True)]


def model_and_device():
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    sys.path.append(str(REPO))  # bench.common; appended, so a baseline tree's tinyreason keeps precedence
    from bench.common import QWEN25_15B, random_qwen2

    model = random_qwen2(QWEN25_15B, "cuda", torch.bfloat16, max_position_embeddings=40960, hidden_act="silu",
                         use_sliding_window=False, attn_implementation="sdpa").eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    from generation import measure_device

    bw, flops = measure_device()
    return model, bw, flops


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def timed_generate(engine, prompts, budgets, **kw):
    import torch

    engine.generate(prompts, budgets, **kw)  # graphs captured, kernels compiled
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = engine.generate(prompts, budgets, **kw)
    torch.cuda.synchronize()
    return out, time.perf_counter() - t


def job_decode(model, bw, flops):
    from generation import prompts_of

    from tinyreason.generation import GenerationEngine

    rows, weights = [], weight_bytes(model)
    for batch, plen, new, sampled in DECODE_ROWS:
        prompts = prompts_of([plen] * batch, seed=3)
        kw = dict(temperature=0.6, top_p=0.95, seed=1) if sampled else dict(seed=1)
        engine = GenerationEngine(model, max_model_len=plen + new, max_num_seqs=batch, fuse_weights=True)
        timed_generate(engine, prompts, [new] * batch, **kw)
        st = engine.stats
        ms = 1e3 * st["decode_s"] / st["decode_steps"]
        floor_ms = 1e3 * (weights + batch * (plen + new / 2) * KV_BYTES_PER_TOKEN) / bw
        rows.append(dict(batch=batch, prompt=plen, new=new, sampling="T 0.6, top_p 0.95" if sampled else "greedy",
                         ms_per_step=round(ms, 3), floor_ms=round(floor_ms, 3), floor_ratio=round(floor_ms / ms, 3)))
        print(json.dumps(rows[-1]), flush=True)
        del engine
    return rows


def job_generate_batch(model, bw, flops):
    """transformers' continuous batching (`generate_batch`, what TRL's use_transformers_continuous_batching
    runs) on the decode-latency workload at batch 64: defaults, and its highest compile level."""
    import torch
    from generation import prompts_of
    from transformers import GenerationConfig
    from transformers.generation import ContinuousBatchingConfig

    weights, out = weight_bytes(model), []
    for batch, level in ((64, 0), (64, 3), (1, 0)):
        prompts = prompts_of([512] * batch, seed=3)
        gen = GenerationConfig(max_new_tokens=512, do_sample=True, temperature=0.6, top_p=0.95, top_k=None,
                               eos_token_id=None, pad_token_id=0)
        cb = ContinuousBatchingConfig(default_compile_level=level, use_cuda_graph=True)
        try:
            for _ in range(2):  # second call timed
                torch.cuda.synchronize()
                t = time.perf_counter()
                res = model.generate_batch(prompts, generation_config=gen, continuous_batching_config=cb)
                torch.cuda.synchronize()
                secs = time.perf_counter() - t
        except Exception as exc:  # noqa: BLE001 - an anchor that fails is recorded, not fatal
            out.append({"batch": batch, "compile_level": level, "error": f"{type(exc).__name__}: {exc}"[:400]})
            continue
        new = sum(len(r.generated_tokens) for r in res.values())
        ms = 1e3 * secs / 512  # whole call (prefill included) per decode step
        floor_ms = 1e3 * (weights + batch * 768 * KV_BYTES_PER_TOKEN) / bw
        out.append({"batch": batch, "compile_level": level, "s": round(secs, 2), "new_tokens": new,
                    "ms_per_step_incl_prefill": round(ms, 3), "floor_ratio": round(floor_ms / ms, 3)})
        print(json.dumps(out[-1]), flush=True)
    return out


def job_sampler(model, bw, flops):
    """ms per call of the sampler at the vocabulary size, the baseline's sort-based one beside."""
    import torch

    from bench.common import QWEN25_15B  # on sys.path since model_and_device
    from tinyreason.generation import sampler

    out = []
    for rows in (1, 64, 256):
        logits = (torch.randn(rows, QWEN25_15B["vocab_size"], device="cuda") * 3).to(torch.bfloat16)
        seeds, pos = torch.arange(rows, device="cuda"), torch.arange(rows, device="cuda") + 100
        t, p = torch.tensor(0.6, device="cuda"), torch.tensor(0.95, device="cuda")
        impls = {"sample": sampler.sample}  # the tree's sampler: the Triton kernel, or the baseline's sort
        same = None
        if hasattr(sampler, "sample_reference"):
            impls["torch_reference"] = sampler.sample_reference
            same = torch.equal(sampler.sample(logits, seeds, pos, t, p), sampler.sample_reference(logits, seeds, pos, t, p))
        row = {"rows": rows, "sample_equals_reference": same}
        for name, fn in impls.items():
            for _ in range(3):
                fn(logits, seeds, pos, t, p)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(20):
                fn(logits, seeds, pos, t, p)
            end.record()
            torch.cuda.synchronize()
            row[f"{name}_ms"] = round(start.elapsed_time(end) / 20, 4)
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def job_check(model, bw, flops):
    from generation import check_attention, check_engine

    return {"attention": check_attention(), "engine": check_engine(model)}


def job_profile(model, bw, flops, out_dir: Path):
    """Kernel table of 64 sampled decode steps at batch 64 (CUDA graphs off, so kernels are named)."""
    import torch
    from generation import prompts_of
    from torch.profiler import ProfilerActivity, profile

    from tinyreason.generation import GenerationEngine

    prompts = prompts_of([512] * 64, seed=3)
    engine = GenerationEngine(model, max_model_len=600, max_num_seqs=64, fuse_weights=True, use_cuda_graph=False)
    engine.generate(prompts, [64] * 64, temperature=0.6, top_p=0.95)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        engine.generate(prompts, [64] * 64, temperature=0.6, top_p=0.95)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60)
    (out_dir / "rl-scale-profile-b64.txt").write_text(table)
    print(table, flush=True)
    events = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:12]
    return [{"kernel": e.key[:80], "calls": e.count, "total_ms": round(e.device_time_total / 1e3, 2)} for e in events]


def job_math500(model, bw, flops, scale: float = 1.0):
    import torch
    from generation import LENGTHS, draw_lengths, floor_seconds, prompts_of

    from tinyreason.generation import GenerationEngine

    lengths = json.loads((RESULTS / "generation-reasoning-prompt-lengths.json").read_text())["math500"]
    lengths = lengths[:max(1, int(len(lengths) * scale))]
    prompts = prompts_of(lengths, seed=1)
    budgets = draw_lengths(len(prompts), LENGTHS["math500"], 32768, seed=2)
    engine = GenerationEngine(model, max_model_len=max(map(len, prompts)) + 32768, max_num_seqs=512,
                              fuse_weights=True)
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = engine.generate(prompts, budgets, temperature=0.6, top_p=0.95, seed=1, show_progress=False)
    torch.cuda.synchronize()
    secs = time.perf_counter() - t  # first call: graph captures included
    new = sum(map(len, out))
    floor = floor_seconds(model, engine.stats, sum(map(len, prompts)), bw, flops)
    return {"prompts": len(prompts), "s": round(secs, 1), "new_tokens": new, "tok_s": round(new / secs),
            "floor_ratio": round(floor / secs, 3), "mean_budget": round(sum(budgets) / len(budgets)),
            "at_cap": sum(b == 32768 for b in budgets), "preemptions": engine.stats.get("preemptions"),
            "kv_cache_gib": round(engine.cache_bytes / 2**30, 1), "max_num_seqs": 512,
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)}


GENERATION_JOBS = {"check": job_check, "sampler": job_sampler, "decode": job_decode,
                   "generate_batch": job_generate_batch, "profile": job_profile, "math500": job_math500,
                   "math500_tenth": lambda m, bw, fl: job_math500(m, bw, fl, scale=0.1)}
# GRPO jobs: bench/grpo.py workers (variant, workload, steps)
# (steps: the first includes compiles and graph captures, the median of the rest is reported; one
# step is reported as is, for the slowest anchors)
GRPO_JOBS = {"grpo8": ("tinyreason-fast", "8x8x512", 4), "grpo8_trl_cb": ("trl-continuous-batching", "8x8x512", 2),
             "grpo8_trl_hf": ("trl-hf-generate", "8x8x512", 1), "open_rs2": ("tinyreason", "open-rs2", 3),
             "open_rs2_trl_cb": ("trl-continuous-batching", "open-rs2", 1)}


def run_worker(job: str, tree: Path, out_dir: Path) -> dict:
    """In this process (spawned by main): one generation job on `tree`'s tinyreason."""
    sys.path.insert(0, str(tree.resolve()))
    import tinyreason.generation  # noqa: F401 - imported first, so the bench helpers below get this tree's

    assert Path(tinyreason.generation.__file__).is_relative_to(tree.resolve()), tinyreason.generation.__file__
    sys.path.insert(1, str(REPO / "bench"))
    model, bw, flops = model_and_device()
    results = {"copy_bandwidth_tb_s": round(bw / 1e12, 3), "matmul_tflop_s": round(flops / 1e12)}
    for name in job.split("+"):  # one model build for several jobs
        fn = GENERATION_JOBS[name]
        t0 = time.perf_counter()
        try:
            results[name] = fn(model, bw, flops, out_dir) if name == "profile" else fn(model, bw, flops)
        except Exception as exc:  # noqa: BLE001 - recorded; the next job still runs
            import traceback

            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:600]}
        print(f"RESULT-PART {name} {time.perf_counter() - t0:.1f} s", flush=True)
        (out_dir / f"partial-{job.replace('+', '_')}.json").write_text(json.dumps(results, indent=1))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", default="", help="comma-separated NAME[@base][:seconds]; @base: the baseline tree")
    ap.add_argument("--base", type=Path, default=REPO / ".base")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--limit", type=int, default=300, help="seconds per job")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--tree", type=Path, default=REPO, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(run_worker(args.worker, args.tree, args.out)), flush=True)
        return
    import torch

    gpu = torch.cuda.get_device_name()
    tag = next((c.lower() for c in ("H100", "H200") if c in gpu), "gpu")
    name = f"rl-scale-{dt.date.today():%Y-%m-%d}-{tag}.json"
    prior = RESULTS / name
    report = json.loads(prior.read_text()) if prior.is_file() else {"gpu": gpu, "runs": {}}
    commit = os.environ.get("BENCH_COMMIT") or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                                             text=True, cwd=REPO).stdout.strip()
    base_commit = (args.base / "COMMIT").read_text().strip() if (args.base / "COMMIT").is_file() else str(args.base)
    report.update(gpu=gpu, commit=commit, baseline_commit=base_commit)
    args.out.mkdir(parents=True, exist_ok=True)
    for spec in args.jobs.split(","):
        job, _, limit = spec.partition(":")  # NAME[@base][:seconds]
        limit = int(limit or args.limit)
        key, _, which = job.partition("@")
        tree = (args.base if which == "base" else REPO).resolve()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "BENCH_TREE": str(tree)}
        t0 = time.perf_counter()
        if key in GRPO_JOBS:
            variant, workload, steps = GRPO_JOBS[key]
            rollout = "trl" if variant.startswith("trl") else "engine"
            if which == "base":
                variant = "tinyreason-fast" if workload == "8x8x512" else "tinyreason"
                steps = min(steps, 2 if workload == "open-rs2" else steps)
            work = Path("/tmp/rl-scale-grpo")
            if not (work / "train.jsonl").is_file():
                subprocess.run([sys.executable, str(REPO / "bench" / "grpo.py"), "--work", str(work), "--assets-only"],
                               env=env, check=True)
            cmd = [sys.executable, str(REPO / "bench" / "grpo.py"), "--work", str(work), "--workload", workload,
                   "--worker", variant, rollout, str(steps)]
            result_file = work / f"result-{variant}.json"
            result_file.unlink(missing_ok=True)
        else:
            cmd = [sys.executable, __file__, "--worker", key, "--tree", str(tree), "--out", str(args.out)]
        print(f"== {job} ({tree})", flush=True)
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit)
            print(proc.stdout[-4000:], proc.stderr[-3000:] if proc.returncode else "", flush=True)
            if proc.returncode:
                result = {"error": proc.stderr[-1500:]}
            elif key in GRPO_JOBS:
                result = json.loads(result_file.read_text())
            else:
                result = json.loads(next(l for l in proc.stdout.splitlines()[::-1] if l.startswith("RESULT "))[7:])
        except subprocess.TimeoutExpired as exc:  # what the worker finished is in its partial file
            partial = args.out / f"partial-{key.replace('+', '_')}.json"
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else str(exc.stdout or "")
            result = {"error": f"timed out after {limit} s", "stdout_tail": out[-2000:],
                      "partial": json.loads(partial.read_text()) if partial.is_file() else None}
        report["runs"][job] = {"result": result, "wall_s": round(time.perf_counter() - t0, 1),
                               "commit": base_commit if which == "base" else commit}
        (args.out / name).write_text(json.dumps(report, indent=1))
        print(f"== {job} done in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
