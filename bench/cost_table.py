"""The README's cost table: every Tina preset's GPU-hours and dollars from a measured GRPO step.

    python3 bench/cost_table.py bench/results/rl-scale-<date>-<gpu>.json [--usd-per-gpu-hour 2.0]

Measured: the open-rs2 step (48 completions of up to 3,584 tokens, random weights, so every
completion runs to the cap) in the results file, split into rollout and the rest. Extrapolated:
presets with another number of completions per step keep the rollout time (it is set by the
3,584 sequential decode steps, nearly flat in the batch) and scale the rest by completions. Random
weights run every completion to the cap: a trained model stops earlier, so these are upper bounds.
Tina's published figures: $9 for the best checkpoint (Tina-Open-RS2, training + evaluation) and
$526 for every experiment of the paper, on 2 x L40S at about $1 a GPU-hour (arXiv 2504.15777).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TINA_PUBLISHED = {"open-rs2": "$9 best checkpoint (training + evaluation)"}


def preset_steps() -> list[tuple[str, int, int, int]]:
    """(preset, completions per step, max completion length, stop step) of every Tina preset."""
    from tinyreason.recipes import load_recipe, recipe_names

    out = []
    for name in recipe_names():
        train = load_recipe(name)["params"].get("train", {})
        grpo = train.get("grpo", {})
        if train.get("method") != "grpo":
            continue
        completions = train["per_device_train_batch_size"] * train["gradient_accumulation_steps"]
        out.append((name, completions, grpo["max_completion_length"], grpo.get("stop_at_step") or train["max_steps"]))
    return out


def table(results: dict, usd_per_gpu_hour: float) -> str:
    run = results["runs"]["open_rs2"]["result"]
    step, rollout = run["seconds_per_step"], run["breakdown_s"].get("rollout", 0.0)
    measured_completions = run["completion_tokens_per_step"] / run["mean_completion_length"]
    rows = [f"Measured on {results['gpu']} (commit {results['commit']}): open-rs2 step {step:.1f} s "
            f"(rollout {rollout:.1f} s), {run['mean_completion_length']:.0f} tokens a completion.", "",
            "| preset | completions/step | stop step | s/step | GPU-hours | $ at "
            f"${usd_per_gpu_hour:g}/GPU-hour | how | Tina's published cost |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, completions, length, stop in preset_steps():
        measured = name == "open-rs2" or (completions == round(measured_completions) and length == 3584)
        s = step if measured else rollout + (step - rollout) * completions / measured_completions
        hours = s * stop / 3600
        rows.append(f"| {name} | {completions} | {stop} | {s:.1f} | {hours:.1f} | {hours * usd_per_gpu_hour:.0f} | "
                    f"{'measured' if name == 'open-rs2' else 'same step shape' if measured else 'extrapolated'} | "
                    f"{TINA_PUBLISHED.get(name, '')} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path)
    ap.add_argument("--usd-per-gpu-hour", type=float, default=2.0)
    args = ap.parse_args()
    print(table(json.loads(args.results.read_text()), args.usd_per_gpu_hour))


if __name__ == "__main__":
    main()
