"""DVC itself on one CUDA GPU: the seeded recipe as a user runs it, `dvc repro` and friends.

In a scratch git repository holding this project's tracked files, with params.yaml as shipped except
`model.name_or_path` (a random-weight model of the Qwen2.5-1.5B architecture, built here: no hub),
it runs, timing each:
  1. dvc repro                                  the whole DAG (check -> prepare -> train, evaluate_base -> evaluate)
  2. dvc repro                                  again: must do nothing ("up to date")
  3. git commit of dvc.lock and the metrics     the baseline a user would commit
  4. dvc exp run -S train.learning_rate=1e-4    an experiment: train and evaluate rerun, evaluate_base is skipped
  5. dvc exp show --md, dvc metrics diff --md, dvc plots diff HEAD (HTML kept)
GPU memory is sampled with nvidia-smi every 200 ms for the whole run (torch's own peak per stage is
in each stage's cost report). Writes <out>/dvc-gpu.json, dvc-gpu.md, dvc-gpu-log.txt and
dvc-gpu-plots.html.

    python bench/dvc_gpu.py --tokenizer DIR --out bench/results

The tokenizer is a real one: SmolLM2's BPE (49,152 tokens, ChatML), saved from the GGUF file of the
CPU profile's pip package; the model keeps Qwen2.5-1.5B's 151,936-row embedding (ids past the
tokenizer's decode to nothing), so the matmuls and memory are the real model's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import REPO, save_random_qwen25_15b  # noqa: E402
DVC = [sys.executable, "-m", "dvc"]  # where pip installed dvc with --target, no `dvc` is on PATH


class GpuMemorySampler(threading.Thread):
    """Peak of nvidia-smi's memory.used (MiB) while it runs: every process on the card, CUDA context
    included, which torch.cuda.max_memory_allocated does not see."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_mib, self._done = 0, threading.Event()

    def run(self):
        while shutil.which("nvidia-smi") and not self._done.wait(0.2):
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout.split()
            if out:
                self.peak_mib = max(self.peak_mib, int(out[0]))

    def stop(self) -> float:
        self._done.set()
        self.join()
        return round(self.peak_mib / 1024, 2)


def scratch_repo(dest: Path, model_dir: Path | None) -> None:
    """This project's tracked files in a fresh git repo; params.yaml as shipped but the model path
    (None: the CPU profile instead, to check this script on a machine without a GPU)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split("\0")
    for rel in filter(None, files):
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    params = dest / "params.yaml"
    if model_dir is None:
        text, n = re.subn(r"(?m)^profile: \S+", "profile: cpu", params.read_text(), count=1)
    else:
        text, n = re.subn(r"(?m)^(  name_or_path: )\S+", rf"\g<1>{model_dir}", params.read_text(), count=1)
    assert n == 1, "params.yaml: the key to set was not found"
    params.write_text(text)
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "project snapshot"]):
        subprocess.run(["git", *cmd], cwd=dest, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--lr", default="1e-4", help="the experiment's train.learning_rate")
    parser.add_argument("--cpu", action="store_true", help="no GPU: the same commands on the CPU profile "
                        "(checks this script; its times are not the GPU figures)")
    args = parser.parse_args()
    if not args.cpu and args.tokenizer is None:
        parser.error("--tokenizer DIR is needed to build the GPU model")
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / "tinyreason-dvc-gpu"
    shutil.rmtree(scratch, ignore_errors=True)
    repo, model_dir = scratch / "repo", scratch / "model"
    repo.mkdir(parents=True)
    start = time.perf_counter()
    if not args.cpu:
        save_random_qwen25_15b(args.tokenizer.resolve(), model_dir)
    built = time.perf_counter() - start
    scratch_repo(repo, None if args.cpu else model_dir)
    # The stages run `python stages/x.py` in the scratch repo: its tinyreason must import, and
    # `python` must exist (some images have only python3).
    bin_dir = scratch / "bin"
    bin_dir.mkdir()
    # A script, not a symlink: a symlink to a virtualenv's python would lose the virtualenv.
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])),
           "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@local", "GIT_COMMITTER_NAME": "bench",
           "GIT_COMMITTER_EMAIL": "bench@local", "PYTHONUNBUFFERED": "1"}
    log = open(args.out / "dvc-gpu-log.txt", "w")
    results: dict = {"gpu": "cpu (profile cpu)" if args.cpu else torch.cuda.get_device_name(0), "date": time.strftime("%Y-%m-%d"),
                     "model": ("the CPU profile (SmolLM2-135M GGUF, addition task)" if args.cpu else
                               "random-weight Qwen2.5-1.5B architecture (bf16 on disk), SmolLM2 tokenizer"),
                     "model_build_seconds": round(built, 1), "steps": []}

    def step(name: str, *cmd: str) -> str:
        """Run one command in the scratch repo; time it and each DVC stage it runs ("Running stage" lines)."""
        sampler = GpuMemorySampler()
        sampler.start()
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        lines, stages = [], []
        for line in proc.stdout:
            lines.append(line)
            log.write(line)
            if m := re.match(r"Running stage '([\w-]+)'", line):
                stages.append([m.group(1), time.perf_counter()])
        rc = proc.wait()
        end = time.perf_counter()
        seconds, peak, output = round(end - t0, 1), sampler.stop(), "".join(lines)
        marks = [t for _, t in stages[1:]] + [end]
        stage_seconds = {stage: round(stop - begin, 1) for (stage, begin), stop in zip(stages, marks)}
        log.write(f"==== {name}: {' '.join(cmd)} rc={rc} {seconds} s stages {stage_seconds}\n")
        log.flush()
        print(f"{name}: {seconds} s {stage_seconds}, rc {rc}, GPU memory peak {peak} GiB", flush=True)
        results["steps"].append({"name": name, "command": " ".join(cmd), "seconds": seconds, "rc": rc,
                                 "stage_seconds": stage_seconds, "gpu_memory_peak_gib": peak})
        if rc:
            raise SystemExit(f"{name} failed (rc {rc}):\n{output[-4000:]}")
        return output

    step("dvc repro", *DVC, "repro")
    results["stage_costs"] = {stage: json.loads((repo / "metrics" / f"{stage}.json").read_text()).get("cost")
                              for stage in ("train", "evaluate_base", "evaluate")}
    again = step("dvc repro (again)", *DVC, "repro")
    results["second_repro_up_to_date"] = "up to date" in again
    # What a user commits after a run: dvc.lock plus the uncached outputs (metrics, DVCLive curves),
    # which `dvc metrics diff` / `dvc plots diff` read from git at HEAD.
    step("commit baseline", "bash", "-c", "git add -A && git commit -q -m 'seeded run' && git log --oneline -1")
    step(f"dvc exp run -S train.learning_rate={args.lr}", *DVC, "exp", "run", "-S", f"train.learning_rate={args.lr}")
    # The whole table has a column per param and metric (hundreds of KB): its rows' heads are enough.
    results["exp_show"] = [line[:300] for line in step("dvc exp show", *DVC, "exp", "show", "--md",
                                                         "--no-pager").splitlines()]
    results["metrics_diff"] = step("dvc metrics diff", *DVC, "metrics", "diff", "--md", "HEAD")
    step("dvc plots diff", *DVC, "plots", "diff", "HEAD", "-o", "plots-diff")
    shutil.copy(repo / "plots-diff" / "index.html", args.out / "dvc-gpu-plots.html")
    (args.out / "dvc-gpu.json").write_text(json.dumps(results, indent=2))

    lines = [f"# DVC end to end ({results['gpu']}, {results['date']})", "",
             f"{results['model']}; params.yaml as shipped except {'profile' if args.cpu else 'model.name_or_path'}. "
             f"Model built in {results['model_build_seconds']} s (not in the table).", "",
             "| command | seconds | stages run (seconds each, DVC's own work included) | GPU memory peak GiB |",
             "| --- | --- | --- | --- |"]
    lines += [f"| `{s['name']}` | {s['seconds']} | "
              f"{', '.join(f'{k} {v}' for k, v in s['stage_seconds'].items()) or '-'} | {s['gpu_memory_peak_gib']} |"
              for s in results["steps"]]
    for stage, cost in results["stage_costs"].items():
        if cost:
            lines.append(f"\n{stage} stage: {cost.get('wall_seconds')} s wall, torch peak {cost.get('peak_memory_gib')} GiB")
    lines += ["", f"Second `dvc repro` up to date: {results['second_repro_up_to_date']}", "",
              "## dvc metrics diff HEAD (baseline committed, experiment in the workspace)", "", results["metrics_diff"],
              "", "Redo: `python bench/dvc_gpu.py " + ("--cpu" if args.cpu else "--tokenizer DIR") + " --out bench/results`"]
    (args.out / "dvc-gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
