"""The real stages (prepare -> train -> evaluate_base -> evaluate) on one CUDA GPU, with the seeded recipe's settings
(QLoRA NF4 + adamw_8bit for `train.speed=faithful`, the planned fast path for `fast`) on a
random-weight model of the Qwen2.5-1.5B architecture. No hub is needed: the model is built from its
config and saved next to a ChatML tokenizer given on the command line.

It checks what CPU CI cannot: bitsandbytes 4-bit loading and the 8-bit optimizer inside the train
stage, checkpoint/best-model reload with a 4-bit base, and the evaluate stage's merged-adapter
generation through the fast engine. Writes <out>/gpu-pipeline.json and .md.

    python bench/gpu_pipeline.py --tokenizer DIR --out bench/results [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import REPO, save_random_qwen25_15b  # noqa: E402


DVCLIVE_SHIM = '''"""Stand-in for dvclive where it cannot be installed (the GPU bench machine has no dvc):
accepts the calls the stages make and records nothing. Only bench/gpu_pipeline.py puts it on the path."""
class Live:
    def __init__(self, *args, **kwargs):
        self.step = 0
    def __getattr__(self, name):
        return lambda *args, **kwargs: None
'''


def python_path(scratch: Path) -> str:
    paths = [str(REPO)]
    try:
        import dvclive  # noqa: F401 - is it installed?
    except ImportError:
        shim = scratch / "shim" / "dvclive"
        shim.mkdir(parents=True, exist_ok=True)
        (shim / "__init__.py").write_text(DVCLIVE_SHIM)
        paths.append(str(shim.parent))
    return os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")])


def run(work: Path, stage: str, log) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, f"stages/{stage}.py"], cwd=work, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": python_path(work.parent)})
    log.write(f"==== {stage} rc={proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}\n")
    log.flush()
    if proc.returncode:
        raise SystemExit(f"{stage} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--speeds", default="faithful,fast")
    parser.add_argument("--eval-problems", type=int, default=256)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / "tinyreason-gpu-pipeline"
    shutil.rmtree(scratch, ignore_errors=True)
    model_dir = scratch / "model"
    save_random_qwen25_15b(args.tokenizer, model_dir)
    results = {"gpu": torch.cuda.get_device_name(0), "date": time.strftime("%Y-%m-%d"), "steps": args.steps,
               "runs": {}}
    log = open(args.out / "gpu-pipeline-log.txt", "w")
    for speed in args.speeds.split(","):
        work = scratch / speed
        work.mkdir(parents=True)
        for name in ("stages", "data"):
            shutil.copytree(REPO / name, work / name, ignore=shutil.ignore_patterns("prepared", "__pycache__"))
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["model"]["name_or_path"] = str(model_dir)  # the seeded recipe otherwise: NF4, adamw_8bit, 2 x 4
        params["train"].update(max_steps=args.steps, warmup_steps=max(1, args.steps // 5),
                               eval_steps=args.steps // 2, save_steps=args.steps // 2, speed=speed)
        params["evaluate"]["benchmarks"] = {"gsm8k": {"limit": args.eval_problems, "prompt": "final_answer"}}
        params["evaluate"]["max_new_tokens"] = 256
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        times = {stage: round(run(work, stage, log), 1) for stage in ("prepare", "train", "evaluate_base", "evaluate")}
        train = json.loads((work / "metrics" / "train.json").read_text())
        evaluation = json.loads((work / "metrics" / "evaluate.json").read_text())
        results["runs"][speed] = {"stage_seconds": times, "train": train, "evaluate_cost": evaluation["cost"],
                                  "adapter_files": sorted(p.name for p in (work / "models" / "adapter").iterdir())}
        print(speed, json.dumps(results["runs"][speed], indent=1)[:1500], flush=True)
    (args.out / "gpu-pipeline.json").write_text(json.dumps(results, indent=2))
    lines = [f"# Real stages on one GPU ({results['gpu']}, {results['date']})", "",
             f"Random-weight Qwen2.5-1.5B architecture, seeded recipe params, {args.steps} steps, "
             f"evaluate on {args.eval_problems} GSM8K prompts x 256 new tokens, base and adapter.", "",
             "| train.speed | prepare s | train s | evaluate_base + evaluate s | best eval loss | train tok/s | train peak GiB | "
             "eval peak GiB |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for speed, r in results["runs"].items():
        t = r["train"]
        lines.append(f"| {speed} | {r['stage_seconds']['prepare']} | {r['stage_seconds']['train']} | "
                     f"{r['stage_seconds']['evaluate_base'] + r['stage_seconds']['evaluate']:.1f} | {t['best_eval_loss']} | {t['train_tokens_per_second']} | "
                     f"{t['cost']['peak_memory_gib']} | {r['evaluate_cost']['peak_memory_gib']} |")
    lines += ["", f"Redo: `python bench/gpu_pipeline.py --tokenizer DIR --steps {args.steps}`"]
    (args.out / "gpu-pipeline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
