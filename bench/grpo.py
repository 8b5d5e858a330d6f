"""GRPO benchmark: TRL GRPOTrainer with HF generate vs tinyreason's GRPO path, side by side, one GPU.

All variants run `tinyreason.grpo.train_grpo` (TRL 1.16 GRPOTrainer + PEFT LoRA, same GRPOConfig
semantics, same rewards, 64 completions per optimizer step); they differ in rollouts and micro-batching:
    trl-hf-generate          : rollout=trl: TRL's own path (HF `generate`, left padded), micro-batch
                               8 x accumulation 8, gradient checkpointing (Tina's training settings)
    tinyreason-unmerged      : rollout=engine (TRL rollout_func -> tinyreason.generation's static-cache,
                               CUDA-graph, continuous-batching engine) on the unmerged PEFT model
    tinyreason-fast-unmerged : + micro-batch 16 x accumulation 4, no gradient checkpointing
    tinyreason-fast          : + rollouts on merged weights (train.grpo.merge_for_rollout, default)
Same gradient for every variant: loss_type grpo averages per sequence, and accumulation rescales.

Workload per optimizer step: 8 prompts x 8 completions x 512 new tokens (64 completions), LoRA r32 /
alpha 128 / dropout 0.05 on the 7 projections (Tina), bf16, beta 0.04 (reference pass through the
adapter-disabled model), loss_type grpo, rewards format + accuracy. Model: random-weight
Qwen2.5-1.5B built from its config in code (hidden 1536, 28 layers, 12 heads, 2 KV heads, intermediate 8960, vocab 151936, tied embeddings)
with a word-level tokenizer covering the whole vocabulary. Random weights almost never emit EOS, so
completions run to 512 tokens (the mean length is reported).

    python bench/grpo.py --out DIR            # GPU: writes DIR/grpo-<gpu>-<date>.{json,md}
    python bench/grpo.py --tiny --out /tmp/x  # CPU dry run of the harness on a tiny model

Each variant runs in its own process; results are written after each one, so a cut-off run keeps
what finished. Seconds per step: median over the steps after the first (the first includes CUDA
init and graph capture); completion tok/s = completion tokens per step / seconds per step.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import QWEN25_15B, REPO, TINY_QWEN2, random_qwen2  # noqa: E402

# BENCH_TREE: another checkout whose tinyreason package is measured (the baseline commit, same harness)
sys.path.insert(0, os.environ.get("BENCH_TREE", str(REPO)))

TINY = {**TINY_QWEN2, "vocab_size": 512}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> {% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")
ANCHOR = {"card": "H100", "trl_version": "1.16.0", "seconds_per_step": 37.0, "completion_tok_s": 885,
          "peak_gib": 5.1, "note": "TRL 1.16 + HF generate, measured on one H100 (given in issue 7)"}


def build_assets(work: Path, dims: dict) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for w in ("system", "user", "assistant", "<think>", "</think>", "\\boxed{1}"):
        vocab[w] = len(vocab)
    while len(vocab) < dims["vocab_size"]:
        vocab[f"w{len(vocab)}"] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", additional_special_tokens=SPECIALS[1:3])
    tok.chat_template = CHATML
    tok.save_pretrained(work / "model")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = random_qwen2(dims, device, torch.bfloat16 if device == "cuda" else torch.float32, bos_token_id=None,
                         eos_token_id=2, pad_token_id=0)
    model.save_pretrained(work / "model", safe_serialization=True)
    # 8 training problems of ~40 words (about 60 prompt tokens with the template)
    import random

    rng = random.Random(0)
    words = [w for w in vocab if w.startswith("w")]
    with open(work / "train.jsonl", "w") as fh:
        for i in range(8):
            question = " ".join(rng.choice(words) for _ in range(40))
            fh.write(json.dumps({"problem": f"{question} q{i}", "answer": "1"}) + "\n")


# Variants: rollout backend and training-side params (all keep 64 completions per optimizer step).
VARIANTS = {
    "trl-hf-generate": {"rollout": "trl"},
    # engine rollouts on the unmerged PEFT model, TRL's micro-batching (8 x 8, gradient checkpointing)
    "tinyreason-unmerged": {"rollout": "engine", "grpo": {"merge_for_rollout": False}},
    # + micro-batch 16 x accumulation 4 and no gradient checkpointing (the 1.5B fits easily in 80 GB)
    "tinyreason-fast-unmerged": {"rollout": "engine", "per_device_train_batch_size": 16,
                                 "gradient_accumulation_steps": 4, "gradient_checkpointing": False,
                                 "grpo": {"merge_for_rollout": False}},
    # + rollouts on merged weights (train.grpo.merge_for_rollout, the default): tinyreason's GRPO path
    "tinyreason-fast": {"rollout": "engine", "per_device_train_batch_size": 16, "gradient_accumulation_steps": 4,
                        "gradient_checkpointing": False},
    # the params as a user writes them; train.speed fast lets grpo_plan.py choose micro-batch and checkpointing
    "tinyreason": {"rollout": "engine"},
    # TRL's strongest rollout that runs here: transformers continuous batching (paged KV, CUDA graphs)
    "trl-continuous-batching": {"rollout": "trl", "trl_args": {"use_transformers_continuous_batching": True}},
}
# Workloads: completions per optimizer step = per_device_train_batch_size x gradient_accumulation_steps
WORKLOADS = {
    "8x8x512": {},
    # Tina open-rs2 (recipes/open-rs2.yaml on one GPU): 8 problems x 6 completions of up to 3,584 tokens
    "open-rs2": {"per_device_train_batch_size": 6, "gradient_accumulation_steps": 8,
                 "grpo": {"num_generations": 6, "max_completion_length": 3584, "max_prompt_length": 512}},
}


def make_cfg(work: Path, rollout: str, steps: int, tiny: bool, train: dict | None = None, workload: str = "8x8x512"):
    import yaml

    from tinyreason.config import _deep_merge, config_from_dict

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    over = {
        "profile": "seed",
        "model": {"name_or_path": str(work / "model"), "gguf_file": None, "load_in_4bit": False,
                  "dtype": "float32" if tiny else "bfloat16", "attn_implementation": "sdpa"},
        "prompts": {"bench": {"system": None, "user_template": "{question}", "think_prefix": "<think> ",
                              "answer_template": "{answer}", "answer_format": "boxed"}},
        "train": {"method": "grpo", "per_device_train_batch_size": 8, "gradient_accumulation_steps": 8,
                  "max_steps": steps, "learning_rate": 1.0e-6, "lr_scheduler_type": "cosine_with_min_lr",
                  "warmup_steps": 0, "optim": "adamw_torch", "eval_steps": 1000, "save_steps": 1000,
                  "logging_steps": 1, "gradient_checkpointing": True,
                  "lora": {"r": 32, "alpha": 128, "dropout": 0.05},
                  "grpo": {"train_path": str(work / "train.jsonl"), "prompt": "bench", "num_generations": 8,
                           "max_completion_length": 16 if tiny else 512, "temperature": 0.7, "beta": 0.04,
                           "loss_type": "grpo", "rollout": rollout, "max_prompt_length": 256,
                           "held_out": 0}},  # step time only, no held-out scoring
    }
    over = _deep_merge(over, {"train": WORKLOADS[workload]})
    if tiny:
        over["train"]["grpo"]["max_completion_length"] = 16
    train = dict(train or {})
    over["train"]["grpo"].update(train.pop("grpo", {}))
    over["train"].update(train)
    return config_from_dict(_deep_merge(raw, over))


class Breakdown:
    """Seconds per optimizer step in each part of TRL's GRPO step, by wrapping the methods that do
    them (CUDA-synchronised): rollout (generation), no-grad log-prob passes (reference / old
    policy), the training forward (with grad), backward, optimizer; the rest is rewards, padding,
    logging. Wrappers only time: the computation is unchanged."""

    def __init__(self):
        import collections

        self.now, self.steps = collections.defaultdict(float), []

    def wrap(self, owner, name, key):
        import functools

        import torch

        orig = getattr(owner, name)

        @functools.wraps(orig)
        def timed(*a, **kw):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = orig(*a, **kw)
            torch.cuda.synchronize()
            self.now[key(*a, **kw) if callable(key) else key] += time.perf_counter() - t0
            return out

        setattr(owner, name, timed)

    def install(self):
        import torch
        from accelerate import Accelerator
        from trl import GRPOTrainer

        self.wrap(GRPOTrainer, "_generate", "rollout")  # the engine's rollout_func or TRL's generation
        self.wrap(GRPOTrainer, "_get_per_token_logps_and_entropies",
                  lambda *a, **kw: "train_forward" if torch.is_grad_enabled() else "logps_no_grad")
        self.wrap(GRPOTrainer, "_calculate_rewards", "rewards")
        self.wrap(Accelerator, "backward", "backward")

    def step_end(self, seconds: float, optimizer: float):
        row = {k: round(v, 3) for k, v in self.now.items()}
        row["optimizer"] = round(optimizer, 3)
        row["other"] = round(seconds - sum(row.values()), 3)
        self.steps.append(row)
        self.now.clear()


def worker(work: Path, name: str, rollout: str, steps: int, tiny: bool, workload: str = "8x8x512") -> dict:
    import torch
    from transformers import TrainerCallback

    from tinyreason import grpo

    breakdown = Breakdown()

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.t0, self.opt0, self.opt = [], None, None, 0.0

        def _sync(self):
            if torch.cuda.is_available():
                torch.cuda.synchronize()

        def on_step_begin(self, args, state, control, **kw):
            self._sync()
            self.t0 = time.perf_counter()

        def on_pre_optimizer_step(self, args, state, control, **kw):
            self._sync()
            self.opt0 = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kw):
            self._sync()
            self.opt = time.perf_counter() - self.opt0

        def on_step_end(self, args, state, control, **kw):
            self._sync()
            self.times.append(time.perf_counter() - self.t0)
            breakdown.step_end(self.times[-1], self.opt)

    timer = StepTimer()
    variant = dict(VARIANTS[name])
    trl_args = variant.pop("trl_args", {})
    train = {k: v for k, v in variant.items() if k != "rollout"}
    cfg = make_cfg(work, rollout, steps, tiny, train, workload)
    if torch.cuda.is_available():
        breakdown.install()
    # Attach the timer through TRL's callback API (GRPOTrainer.add_callback) right after init; TRL
    # settings the params do not carry are set on the GRPOConfig before the trainer reads it.
    from trl import GRPOTrainer

    orig_init = GRPOTrainer.__init__

    def init_with_timer(self, *a, **kw):
        for key, value in trl_args.items():
            setattr(kw["args"], key, value)
        orig_init(self, *a, **kw)
        self.add_callback(timer)

    GRPOTrainer.__init__ = init_with_timer
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    ckpt = work / f"ckpt-{name}-{workload}"
    shutil.rmtree(ckpt, ignore_errors=True)  # never resume an earlier run's checkpoint (0 steps timed)
    t0 = time.perf_counter()
    result = grpo.train_grpo(cfg, work / "train.jsonl", ckpt)
    total = time.perf_counter() - t0
    logs = [e for e in result.trainer.state.log_history if "completions/mean_length" in e]
    mean_len = statistics.mean(e["completions/mean_length"] for e in logs)
    completions = cfg.train.per_device_train_batch_size * cfg.train.gradient_accumulation_steps
    steady = timer.times[1:] or timer.times
    sps = statistics.median(steady)
    steady_parts = breakdown.steps[1:] or breakdown.steps
    parts = {k: round(statistics.median(p.get(k, 0.0) for p in steady_parts), 3)
             for k in sorted({k for p in steady_parts for k in p})}
    return {
        "variant": name, "workload": workload, "rollout": rollout, "steps": len(timer.times),
        "step_seconds": [round(t, 3) for t in timer.times],
        "seconds_per_step": round(sps, 3),
        "breakdown_s": parts,
        "breakdown_per_step": breakdown.steps,
        "completion_tokens_per_step": round(mean_len * completions, 1),
        "completion_tok_s": round(mean_len * completions / sps, 1),
        "mean_completion_length": round(mean_len, 1),
        "clipped_ratio": logs[-1].get("completions/clipped_ratio"),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "wall_seconds_including_load": round(total, 1),
        "train_overrides": train, "trl_args": trl_args,
        "memory_plan": result.metrics.get("memory_plan"),
        "trl_step_time_logged": [round(e.get("step_time", float("nan")), 3) for e in logs],
    }


def gpu_facts() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"device": "cpu"}
    p = torch.cuda.get_device_properties(0)
    return {"device": p.name, "memory_gib": round(p.total_memory / 2**30, 1)}


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for dist in ("torch", "transformers", "trl", "peft", "accelerate"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def markdown(report: dict) -> str:
    rows = ["| variant | s/step | completion tok/s | mean completion len | peak GiB | step times (s) |",
            "| --- | --- | --- | --- | --- | --- |"]
    for r in report["results"]:
        rows.append(f"| {r['variant']} | {r['seconds_per_step']} | {r['completion_tok_s']} | "
                    f"{r['mean_completion_length']} | {r['peak_gib']} | {r['step_seconds']} |")
    a = report["anchor"]
    rows.append(f"| anchor (issue 7: {a['note']}) | {a['seconds_per_step']} | {a['completion_tok_s']} | 512 | "
                f"{a['peak_gib']} | |")
    speed = report.get("speedup")
    return "\n".join([f"# GRPO step benchmark ({report['gpu'].get('device')}, {report['date']})", "",
                      "8 prompts x 8 completions x 512 tokens per step, LoRA r32, random Qwen2.5-1.5B, bf16.",
                      f"Versions: {report['versions']}", "", *rows, "",
                      f"Speed-up of tinyreason over TRL+HF generate (same card, same run): {speed}"]) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--tiny", action="store_true", help="CPU dry run on a tiny model")
    ap.add_argument("--engine-steps", type=int, default=5)
    ap.add_argument("--trl-steps", type=int, default=2)
    ap.add_argument("--variants", default="tinyreason-fast,tinyreason-fast-unmerged,trl-hf-generate")
    ap.add_argument("--workload", default="8x8x512", choices=sorted(WORKLOADS))
    ap.add_argument("--assets-only", action="store_true", help="write the model, tokenizer and problems to --work")
    ap.add_argument("--worker", nargs=3, metavar=("NAME", "ROLLOUT", "STEPS"), help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, default=Path("/tmp/grpo-bench"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if args.worker:
        name, rollout, steps = args.worker
        res = worker(args.work, name, rollout, int(steps), args.tiny, args.workload)
        (args.work / f"result-{name}.json").write_text(json.dumps(res))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    build_assets(args.work, TINY if args.tiny else QWEN25_15B)
    if args.assets_only:
        return
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"), "gpu": gpu_facts(),
              "versions": versions(), "anchor": ANCHOR, "results": []}
    device = report["gpu"]["device"]
    tag = "cpu-tiny" if args.tiny else next((c.lower() for c in ("H100", "H200", "A100") if c in device),
                                            "".join(ch for ch in device.lower() if ch.isalnum()))
    stem = args.out / f"grpo-{tag}-{dt.date.today():%Y%m%d}"
    for name in args.variants.split(","):
        rollout = VARIANTS[name]["rollout"]
        steps = args.engine_steps if rollout == "engine" else args.trl_steps
        cmd = [sys.executable, __file__, "--work", str(args.work), "--workload", args.workload, "--worker", name,
               rollout, str(steps)]
        if args.tiny:
            cmd.append("--tiny")
        print("running", name, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            report["results"].append({"variant": name, "error": proc.stderr[-3000:]})
            print(proc.stderr[-3000:], flush=True)
            continue
        res = json.loads((args.work / f"result-{name}.json").read_text())
        report["results"].append(res)
        print(json.dumps(res), flush=True)
        ok = {r["variant"]: r for r in report["results"] if "error" not in r}
        if "trl-hf-generate" in ok:
            base = ok["trl-hf-generate"]["seconds_per_step"]
            report["speedup"] = {k: round(base / r["seconds_per_step"], 2) for k, r in ok.items() if k != "trl-hf-generate"}
        stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
        if all("error" not in r for r in report["results"]):
            stem.with_suffix(".md").write_text(markdown(report))
    print("wrote", stem, flush=True)


if __name__ == "__main__":
    main()
