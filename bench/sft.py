"""Benchmark: the seed SFT stack vs tinyreason's fast path, side by side on one GPU, same data.

    python bench/sft.py                 # on a CUDA GPU: writes bench/results/sft-<gpu>-<date>.{json,md}
    python bench/sft.py --tiny          # CPU dry run of the whole harness on a tiny model (seconds)

Model: random-weight Qwen2.5-1.5B built from its config in code (hidden 1536, 28 layers, 12 heads,
2 KV heads, intermediate 8960, vocab 151936, tied embeddings, rope theta 1e6), saved as bf16
safetensors so both paths load it through modeling.load_base_model like a hub model (NF4 for QLoRA).
Tokenizer: a word-level ChatML tokenizer built offline. Data: 1800 train / 200 val prompt-completion
pairs in the Tiny-Reason chat format with GSM8K-like lengths (150-350 tokens, completion ~60%),
Zipf-distributed words so the loss has something to learn.

Each configuration runs in its own process (a fresh CUDA context and peak-memory count) through
`tinyreason.sft.train_sft`, with the seed recipe from params.yaml (lr 2e-4 linear over 250 steps,
warmup 50, adamw_8bit, wd 0.01, eval/save every 50, effective batch 8, seed 3407):

- seed-stack: train.speed=faithful: TRL SFTTrainer + bitsandbytes QLoRA NF4, 2 x 4, gradient
  checkpointing. The first `--seed-steps` steps (default 25), evaluated there, projected to 250.
- fast: train.speed=fast, as planned for this GPU: all 250 steps (or `--fast-steps`) with the
  recipe's evals and saves, plus an eval at `--compare-step` (default: the seed stack's last step);
  torch.profiler over 3 steps from `--profile-at` (written next to the results).
- fast-nf4, fast-checkpointing: the fast plan with one setting changed (`--ablation-steps`): NF4
  base weights, gradient checkpointing.

Per configuration: s/step (wall time between consecutive optimizer steps, steps with an eval or save
in between excluded, first 3 steps excluded as warm-up), projected time for 250 steps, tokens/s
(non-padding tokens), MFU (6 x parameters x tokens per step / s per step / the GPU's dense bf16 peak),
peak GPU memory (max_memory_allocated), train losses and eval losses. The fast and seed runs share
the recipe's schedule, data order and seed, so their loss curves are compared step by step.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import QWEN25_15B, REPO, TINY_QWEN2, random_qwen2  # noqa: E402

TINY = {**TINY_QWEN2, "vocab_size": 2048}
# Dense bf16 peak (no sparsity) by GPU name, for MFU.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "T4": 65e12}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
REDO = ("python bench/sft.py   # one CUDA GPU, repo root; trl, datasets, bitsandbytes; see "
        "bench/results/sft-h100-2026-11-25.md for the runs of the former custom fast path")


# ---------------------------------------------------------------------------------------------
# Setup: tokenizer, model, data


def word_list(n: int) -> list[str]:
    """n distinct letter-only words (aa, ab, ..., zzz, aaaa, ...): one BPE token each after training."""
    import itertools
    import string

    out = []
    for k in (2, 3, 4):
        for letters in itertools.product(string.ascii_lowercase, repeat=k):
            out.append("".join(letters))
            if len(out) == n:
                return out
    return out


def build_tokenizer(out: Path, words: int):
    """A byte-level BPE trained on the word list, ChatML special tokens and template. Saved next to a
    qwen2 config, AutoTokenizer loads it as Qwen2Tokenizer with the same ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    names = word_list(words)
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3 * words, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [" " + " ".join(names[i:i + 100]) for i in range(0, len(names), 100)] * 3
    corpus += ["<think>\n system user assistant </think>\n**Final Answer:** "] * 20
    core.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=SPECIALS[1:])
    tok.chat_template = CHATML
    tok.save_pretrained(out)
    return tok


def build_model(out: Path, dims: dict) -> int:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = random_qwen2(dims, device, torch.bfloat16, bos_token_id=None, eos_token_id=2, pad_token_id=0)
    model.save_pretrained(out, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    del model
    return n


def build_data(work: Path, tokenizer, n_train: int, n_val: int, words: int) -> dict:
    """GSM8K-like prompt/completion pairs: total 150-350 tokens, completion ~60% of it."""
    from tinyreason import prompts
    from tinyreason.config import PromptConfig

    rng = random.Random(3407)
    names = word_list(words)
    weights = [1.0 / (i + 1) for i in range(words)]  # Zipf
    fmt = PromptConfig(system=" ".join(names[1000:1040]), think_prefix="<think>\n",
                       answer_template="**Final Answer:** {answer}")
    rows, lengths = [], []
    for _ in range(n_train + n_val):
        total = rng.randint(150, 350)
        question = rng.randint(25, 70)
        reasoning = max(total - 40 - question - 16, 10)
        q = " ".join(rng.choices(names, weights, k=question))
        r = " ".join(rng.choices(names, weights, k=reasoning))
        ex = prompts.render_sft_example(tokenizer, fmt, q, r, names[rng.randrange(100)])
        rows.append(json.dumps({"prompt": ex["prompt"], "completion": ex["completion"]}))
        lengths.append(len(tokenizer(ex["text"], add_special_tokens=False)["input_ids"]))
    (work / "train.jsonl").write_text("\n".join(rows[:n_train]) + "\n")
    (work / "val.jsonl").write_text("\n".join(rows[n_train:]) + "\n")
    return {"train": n_train, "val": n_val, "tokens_min": min(lengths), "tokens_max": max(lengths),
            "tokens_mean": round(statistics.mean(lengths), 1)}


# ---------------------------------------------------------------------------------------------
# One configuration (a subprocess)


def make_cfg(work: Path, speed: str, tiny: bool):
    import yaml

    from tinyreason.config import _deep_merge, config_from_dict

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profile"] = "seed"
    over = {"model": {"name_or_path": str(work / "model"), "gguf_file": None, "revision": None},
            "train": {"speed": speed, "logging_steps": 1}}
    if tiny:  # CPU dry run: no bitsandbytes
        over["model"].update(load_in_4bit=False, dtype="float32")
        over["train"].update(optim="adamw_torch")
    return config_from_dict(_deep_merge(raw, over), "bench")


def add_profile_labels():
    """Label Trainer's per-step phases for torch.profiler (the optimizer step is labelled by torch)."""
    import accelerate
    import torch
    import transformers

    import trl  # SFTTrainer.compute_loss: the train stage's loss

    def wrap(owner, attr, label):
        original = getattr(owner, attr)

        def labelled(*a, **kw):
            with torch.profiler.record_function(label):
                return original(*a, **kw)

        setattr(owner, attr, labelled)

    wrap(trl.SFTTrainer, "compute_loss", "## forward+loss")
    wrap(accelerate.Accelerator, "backward", "## backward")
    wrap(accelerate.Accelerator, "clip_grad_norm_", "## clip_grad_norm")
    wrap(transformers.Trainer, "get_batch_samples", "## data")
    wrap(transformers.Trainer, "_track_num_input_tokens", "## tokens_seen")
    wrap(transformers.Trainer, "_maybe_log_save_evaluate", "## log")


def worker(work: Path, name: str, speed: str, stop_at: int, ablation: str | None, tiny: bool,
           eval_at: int | None = None, profile_at: int | None = None) -> dict:
    import dataclasses

    import torch
    from transformers import TrainerCallback

    from tinyreason import sft

    cfg = make_cfg(work, speed, tiny)
    cuda = torch.cuda.is_available()

    if profile_at:
        add_profile_labels()

    class Clock(TrainerCallback):
        def __init__(self):
            self.ends, self.interrupted, self.prof = {}, set(), None

        def on_step_begin(self, args, state, control, **kw):
            if profile_at and state.global_step == profile_at and self.prof is None:
                acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
                self.prof = torch.profiler.profile(activities=acts)
                self.prof.__enter__()

        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            self.ends[state.global_step] = time.perf_counter()
            step = state.global_step
            if profile_at and step == profile_at + 3 and self.prof is not None:
                self.prof.__exit__(None, None, None)
                self.interrupted.update(range(profile_at - 1, profile_at + 4))
                table = self.prof.key_averages()
                text = ["## 3 steps of " + name, table.table(sort_by="self_cpu_time_total", row_limit=30)]
                if cuda:
                    text.append(table.table(sort_by="self_cuda_time_total", row_limit=20))
                (work / f"profile-{name}.txt").write_text("\n".join(text))
            if eval_at and step == eval_at:
                control.should_evaluate = True
            if step >= stop_at:
                control.should_training_stop = True

        def on_evaluate(self, args, state, control, **kw):
            self.interrupted.add(state.global_step)

        def on_save(self, args, state, control, **kw):
            self.interrupted.add(state.global_step)

    plan = None
    if ablation:
        from tinyreason.modeling import load_tokenizer

        tok = load_tokenizer(cfg.model)
        base = sft.make_speed_plan(cfg, tok, sft.read_prompt_completion(work / "train.jsonl"))
        change = {"nf4": dict(load_in_4bit=True, pure_bf16=False),
                  "checkpointing": dict(gradient_checkpointing=True)}[ablation]
        plan = dataclasses.replace(base, **change, reason=f"{base.reason}; ablation: {ablation}")
    clock = Clock()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = sft.train_sft(cfg, work / "train.jsonl", work / "val.jsonl", work / f"ckpt-{name}",
                           callbacks=[clock], plan=plan)
    wall = time.perf_counter() - t0
    state = result.trainer.state
    steps = sorted(clock.ends)
    deltas = [clock.ends[s] - clock.ends[s - 1] for s in steps
              if s - 1 in clock.ends and s > 3 and (s - 1) not in clock.interrupted]
    history = state.log_history
    train_loss = {e["step"]: e["loss"] for e in history if "loss" in e}
    eval_loss = {e["step"]: e["eval_loss"] for e in history if "eval_loss" in e}
    s_step = statistics.mean(deltas) if deltas else float("nan")
    tokens_per_step = state.num_input_tokens_seen / max(state.global_step, 1)
    return {
        "name": name, "speed": speed, "ablation": ablation, "plan": result.metrics["speed"],
        "steps_run": state.global_step, "timed_steps": len(deltas),
        "s_per_step": s_step, "s_per_step_median": statistics.median(deltas) if deltas else None,
        "projected_250_steps_s": s_step * cfg.train.max_steps,
        "tokens_per_step": tokens_per_step, "tokens_per_s": tokens_per_step / s_step if deltas else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "train_runtime_s": result.metrics["train_runtime_seconds"], "process_train_wall_s": wall,
        "train_loss": train_loss, "eval_loss": eval_loss,
        "trainable_parameters": result.metrics["trainable_parameters"],
    }


# ---------------------------------------------------------------------------------------------
# Orchestration


def gpu_facts() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"gpu": "cpu", "peak_bf16_flops": None}
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    return {"gpu": name, "peak_bf16_flops": peak, "gpu_memory_gib": round(
        torch.cuda.get_device_properties(0).total_memory / 2**30, 1)}


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for dist in ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "datasets"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def compare(seed: dict, fast: dict) -> dict:
    common = sorted(set(seed["train_loss"]) & set(fast["train_loss"]), key=int)
    diffs = [abs(seed["train_loss"][s] - fast["train_loss"][s]) for s in common]
    evals = sorted(set(seed["eval_loss"]) & set(fast["eval_loss"]), key=int)
    last = evals[-1] if evals else None
    out = {"steps_compared": len(common), "train_loss_max_abs_diff": max(diffs) if diffs else None,
           "train_loss_mean_abs_diff": statistics.mean(diffs) if diffs else None, "eval_step": last}
    if last is not None:
        a, b = seed["eval_loss"][last], fast["eval_loss"][last]
        out.update(seed_eval_loss=a, fast_eval_loss=b, eval_loss_rel_diff=abs(a - b) / a)
    return out


def markdown(report: dict) -> str:
    rows = report["configs"]
    peak = report["gpu"]["peak_bf16_flops"]
    lines = [f"# SFT benchmark: seed stack vs fast path ({report['gpu']['gpu']}, {report['date']})", "",
             f"Random-weight Qwen2.5-1.5B ({report['model_parameters'] / 1e9:.2f} B parameters), "
             f"{report['data']['train']} train / {report['data']['val']} val GSM8K-like examples of "
             f"{report['data']['tokens_min']}-{report['data']['tokens_max']} tokens "
             f"(mean {report['data']['tokens_mean']}); seed recipe (effective batch 8, 250 steps, lr 2e-4 "
             "linear, warmup 50, adamw_8bit). MFU = 6 x parameters x tokens per step / s per step / "
             f"{peak / 1e12 if peak else float('nan'):.0f} TFLOP/s dense bf16.", "",
             "| config | plan | steps timed | s/step | 250 steps (projected) | tokens/s | MFU | peak GiB | x seed |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        p = r["plan"]
        plan = (f"{'NF4' if p['load_in_4bit'] else 'bf16'} {p['micro_batch']}x{p['accumulation']}"
                f"{' ckpt' if p['gradient_checkpointing'] else ''}")
        lines.append(f"| {r['name']} | {plan} | {r['timed_steps']} | {r['s_per_step']:.4f} | "
                     f"{r['projected_250_steps_s']:.1f} s | {r['tokens_per_s'] or 0:,.0f} | "
                     f"{(r.get('mfu') or 0) * 100:.1f}% | {r['peak_memory_gib'] or 0:.2f} | "
                     f"{r.get('speedup_vs_seed') or 0:.1f}x |")
    fast = next((r for r in rows if r["name"] == "fast"), None)
    if fast:
        lines += ["", f"fast, {fast['steps_run']} steps of the recipe (with its evals and checkpoint saves): "
                      f"train_runtime {fast['train_runtime_s']:.1f} s; final eval loss (step "
                      f"{max(fast['eval_loss'], key=int) if fast['eval_loss'] else '-'}): "
                      f"{fast['eval_loss'][max(fast['eval_loss'], key=int)] if fast['eval_loss'] else float('nan'):.4f}"]
    c = report.get("same_learning")
    if c:
        lines += ["", f"Same learning (seed stack vs fast, same data order, schedule and seed; NF4 vs bf16 base "
                      f"weights): over the first {c['steps_compared']} steps the train loss differs by at most "
                      f"{c['train_loss_max_abs_diff']:.4f} (mean {c['train_loss_mean_abs_diff']:.4f}); eval loss at "
                      f"step {c.get('eval_step')}: seed {c.get('seed_eval_loss', float('nan')):.4f}, fast "
                      f"{c.get('fast_eval_loss', float('nan')):.4f} (relative difference "
                      f"{c.get('eval_loss_rel_diff', float('nan')) * 100:.2f}%)."]
    lines += ["", "Redo: `" + report["command"] + "`", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/tinyreason-bench-sft"))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--seed-steps", type=int, default=25)
    ap.add_argument("--compare-step", type=int, default=None,
                    help="also evaluate the fast run here (default: --seed-steps) to compare eval losses")
    ap.add_argument("--profile-at", type=int, default=20, help="torch.profiler over 3 fast steps from here")
    ap.add_argument("--ablation-steps", type=int, default=40)
    ap.add_argument("--fast-steps", type=int, default=10**9, help="stop the fast run here (default: all 250)")
    ap.add_argument("--configs", default="fast,seed-stack,fast-nf4,fast-checkpointing")
    ap.add_argument("--budget-s", type=float, default=540, help="skip configs that would start after this")
    ap.add_argument("--tiny", action="store_true", help="CPU dry run on a tiny model")
    ap.add_argument("--worker", nargs=4, metavar=("NAME", "SPEED", "STOP_AT", "ABLATION"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.compare_step is None:
        args.compare_step = 6 if args.tiny else args.seed_steps
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    if args.worker:
        name, speed, stop_at, ablation = args.worker
        res = worker(args.work, name, speed, int(stop_at), None if ablation == "-" else ablation, args.tiny,
                     eval_at=args.compare_step, profile_at=args.profile_at if name == "fast" else None)
        (args.work / f"result-{name}.json").write_text(json.dumps(res))
        return

    start = time.perf_counter()
    import torch

    args.work.mkdir(parents=True, exist_ok=True)
    words = 500 if args.tiny else 20000
    tokenizer = build_tokenizer(args.work / "model", words)
    n_params = build_model(args.work / "model", TINY if args.tiny else QWEN25_15B)
    data = build_data(args.work, tokenizer, 48 if args.tiny else 1800, 16 if args.tiny else 200, words)
    gpu = gpu_facts()
    print(f"setup {time.perf_counter() - start:.0f} s: {gpu['gpu']}, model {n_params / 1e9:.3f} B params, data {data}",
          flush=True)
    torch.cuda.empty_cache() if torch.cuda.is_available() else None

    seed_steps = 6 if args.tiny else args.seed_steps
    abl_steps = 6 if args.tiny else args.ablation_steps
    table = {"fast": ("fast", 6 if args.tiny else args.fast_steps, "-"), "seed-stack": ("faithful", seed_steps, "-"),
             "fast-nf4": ("fast", abl_steps, "nf4"), "fast-checkpointing": ("fast", abl_steps, "checkpointing")}
    results = []
    for name in args.configs.split(","):
        if time.perf_counter() - start > args.budget_s:
            print(f"skip {name}: past the {args.budget_s:.0f} s budget", flush=True)
            continue
        speed, stop_at, ablation = table[name]
        cmd = [sys.executable, str(Path(__file__).resolve()), "--work", str(args.work), "--worker", name, speed,
               str(stop_at), ablation, "--compare-step", str(args.compare_step if name in ("fast", "seed-stack") else 0),
               "--profile-at", str(args.profile_at)] + (["--tiny"] if args.tiny else [])
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        out_file = args.work / f"result-{name}.json"
        if proc.returncode != 0 or not out_file.is_file():
            print(f"{name}: FAILED ({proc.returncode})\n{proc.stderr[-3000:]}", flush=True)
            continue
        res = json.loads(out_file.read_text())
        res["process_wall_s"] = time.perf_counter() - t0
        results.append(res)
        print(f"{name}: {res['s_per_step']:.4f} s/step over {res['timed_steps']} steps, "
              f"{res['projected_250_steps_s']:.1f} s for 250, peak {res['peak_memory_gib'] or 0:.2f} GiB, "
              f"eval {res['eval_loss']}, process {res['process_wall_s']:.0f} s", flush=True)

    by_name = {r["name"]: r for r in results}
    seed = by_name.get("seed-stack")
    for r in results:
        r["train_loss"] = {int(k): v for k, v in r["train_loss"].items()}
        r["eval_loss"] = {int(k): v for k, v in r["eval_loss"].items()}
        if gpu["peak_bf16_flops"] and r["tokens_per_s"]:
            r["mfu"] = 6 * n_params * r["tokens_per_s"] / gpu["peak_bf16_flops"]
        if seed and r["s_per_step"]:
            r["speedup_vs_seed"] = seed["s_per_step"] / r["s_per_step"]
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "gpu": gpu, "versions": versions(), "model_parameters": n_params, "data": data,
        "flop_per_step_6NT": 6 * n_params * (results[0]["tokens_per_step"] if results else 0),
        "command": REDO if not args.tiny else "python bench/sft.py --tiny",
        "configs": results,
    }
    if seed and "fast" in by_name:
        report["same_learning"] = compare(seed, by_name["fast"])
    md = markdown(report)
    print(md, flush=True)
    tag = "cpu-tiny" if args.tiny else next((k.lower() for k in PEAK_BF16 if k in gpu["gpu"]), "gpu")
    stem = f"sft-{tag}-{datetime.date.today().isoformat()}"
    profile = args.work / "profile-fast.txt"
    for folder in [args.out] + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else []):
        folder.mkdir(parents=True, exist_ok=True)
        if profile.is_file():
            (folder / f"{stem}-profile.txt").write_text(profile.read_text())
        (folder / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str))
        (folder / f"{stem}.md").write_text(md)
    print(f"wrote {stem}.json/.md; redo: {report['command']}  ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
