"""Benchmark: data-parallel scaling of the SFT train stage over 1, 2, 4, 8 GPUs, same recipe.

    python bench/scaling.py --gpus 1,2,4,8      # on a multi-GPU host: bench/results/scaling-<gpu>-<date>.{json,md}
    python bench/scaling.py --tiny              # CPU dry run: 1 process vs 2 gloo processes (seconds)

Each GPU count runs the real train stage (`python stages/train.py` with train.num_gpus=N, so the
stage relaunches itself through `accelerate launch` exactly as under `dvc repro`) in its own scratch
directory, on the random-weight Qwen2.5-1.5B, tokenizer and GSM8K-like data of bench/sft.py, with the
seed recipe (global batch 2 x 4, lr schedule over 250 steps) for `--steps` optimizer steps.

Per N: wall seconds of the stage, Trainer's train_runtime, tokens/s, speedup and scaling efficiency
against N=1 (tokens/s ratio / N), GPU-seconds, and the largest relative difference of the logged
training loss from the N=1 run at any step (same optimisation: it should stay ~1e-3 in bf16).
With the default global batch of 8, 8 GPUs get one example each: expect communication-bound steps;
`--accumulation` raises the global batch (same for every N) to see scaling at larger batches.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import REPO  # noqa: E402


def setup(work: Path, tiny: bool) -> dict:
    from bench import sft as sft_bench  # bench/sft.py's model, tokenizer and data builders (one synthetic setup)

    words = 400 if tiny else 4000
    tokenizer = sft_bench.build_tokenizer(work / "model", words)
    n_params = sft_bench.build_model(work / "model", sft_bench.TINY if tiny else sft_bench.QWEN25_15B)
    data = sft_bench.build_data(work, tokenizer, 64 if tiny else 1800, 8 if tiny else 200, words)
    return {"parameters": n_params, "data": data}


def params_for(work: Path, n: int, steps: int, accumulation: int | None, tiny: bool) -> dict:
    import yaml

    from tinyreason.config import _deep_merge

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    train = {"num_gpus": n, "max_steps": steps, "logging_steps": 1, "eval_steps": steps, "save_steps": steps,
             "save_total_limit": 1}
    if accumulation:
        train["gradient_accumulation_steps"] = accumulation
    over = {"profile": "seed", "model": {"name_or_path": str(work / "model"), "gguf_file": None, "revision": None},
            "train": train}
    if tiny:  # CPU: no bitsandbytes
        over["model"].update(load_in_4bit=False, dtype="float32")
        train.update(optim="adamw_torch", num_gpus=1, max_length=512)
    return _deep_merge(raw, over)


def run_one(work: Path, n: int, args) -> dict:
    """The train stage in a scratch copy, on n GPUs (or n gloo processes with --tiny)."""
    import yaml

    from tinyreason import distributed

    run = work / f"gpus-{n}"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(REPO / "stages", run / "stages")
    (run / "data" / "prepared").mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copy(work / f"{split}.jsonl", run / "data" / "prepared" / f"{split}.jsonl")
    (run / "params.yaml").write_text(yaml.safe_dump(params_for(work, n, args.steps, args.accumulation, args.tiny)))
    cmd = [sys.executable, "stages/train.py"]
    if args.tiny and n > 1:  # no GPUs to relaunch onto: the launcher command the stage would exec
        cmd = distributed.launch_command(n, "stages/train.py")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=run, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    (run / "train.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        return {"gpus": n, "error": (proc.stderr or proc.stdout)[-1500:]}
    metrics = json.loads((run / "metrics" / "train.json").read_text())
    rows = (run / "dvclive/train/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]
    return {"gpus": n, "stage_wall_seconds": round(wall, 1), "train_runtime_seconds": metrics["train_runtime_seconds"],
            "train_tokens_per_second": metrics["train_tokens_per_second"], "steps": metrics["steps"],
            "gpu_seconds": metrics["cost"]["gpu_seconds"], "device": metrics["cost"]["device"],
            "split": metrics.get("data_parallel"), "speed_plan": metrics.get("speed"),
            "losses": {int(s): float(v) for s, v in (r.split("\t")[:2] for r in rows)}}


def summarise(results: list[dict]) -> None:
    base = next((r for r in results if r["gpus"] == 1 and "error" not in r), None)
    for r in results:
        if base is None or "error" in r:
            continue
        speedup = r["train_tokens_per_second"] / base["train_tokens_per_second"]
        r["speedup"] = round(speedup, 2)
        r["efficiency"] = round(speedup / r["gpus"], 2)
        common = sorted(set(r["losses"]) & set(base["losses"]))
        r["max_rel_loss_diff_vs_1"] = max((abs(r["losses"][s] - base["losses"][s]) / abs(base["losses"][s])
                                           for s in common), default=None)


def markdown(report: dict) -> str:
    lines = [f"# Data-parallel scaling, {report['date']}", "", f"`{report['command']}`", "",
             "| GPUs | per-GPU split | train s | tokens/s | speedup | efficiency | GPU-s | max rel. loss diff vs 1 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['gpus']} | error: {r['error'].splitlines()[-1] if r['error'] else '?'} |||||||")
            continue
        split = r["split"] or {}
        lines.append(f"| {r['gpus']} | {split.get('per_device_train_batch_size', '-')} x "
                     f"{split.get('gradient_accumulation_steps', '-')} | {r['train_runtime_seconds']} | "
                     f"{r['train_tokens_per_second']} | {r.get('speedup', '-')} | {r.get('efficiency', '-')} | "
                     f"{r['gpu_seconds']} | {r.get('max_rel_loss_diff_vs_1')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", default=None, help="comma-separated GPU counts (default 1,2,4,8 up to the visible count)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 30; 4 with --tiny)")
    ap.add_argument("--accumulation", type=int, default=None,
                    help="gradient_accumulation_steps (default: the recipe's)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/tinyreason-bench-scaling"))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--tiny", action="store_true", help="CPU dry run: tiny model, 1 vs 2 gloo processes")
    args = ap.parse_args()
    args.steps = args.steps or (4 if args.tiny else 30)
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if args.gpus:
        counts = [int(x) for x in args.gpus.split(",")]
    else:
        counts = [1, 2] if args.tiny else [n for n in (1, 2, 4, 8) if n <= max(visible, 1)]
    if not args.tiny and max(counts) > visible:
        sys.exit(f"--gpus {max(counts)} but {visible} CUDA GPU(s) visible (fix: --gpus up to {visible}, or --tiny)")
    args.work.mkdir(parents=True, exist_ok=True)
    facts = setup(args.work, args.tiny)
    results = [run_one(args.work, n, args) for n in counts]
    summarise(results)
    gpu = "cpu" if args.tiny else torch.cuda.get_device_name(0).split()[-1].lower()
    command = " ".join(["python", "bench/scaling.py", *sys.argv[1:]])
    report = {"date": datetime.date.today().isoformat(), "command": command,
              "gpu": gpu, "visible_gpus": visible, **facts, "results": results}
    stem = f"scaling-{gpu}-{report['date']}"
    if args.tiny:
        args.out = args.work
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
