"""The first run shows learning. The CPU profile as shipped (`bash scripts/run.sh` on a
machine without a GPU runs it) trains SmolLM2-135M on single-digit addition and evaluates adapter vs
base on the 32 held-out problems: the paired 95% interval of the difference must exclude 0. The stages
run as subprocesses in a scratch copy with the shipped params.yaml (conftest.write_params), as
`dvc exp run -S profile=cpu` runs them, and their stderr must stay free of conversion bars and
repeated library warnings."""

from __future__ import annotations

import json

import pytest

from conftest import make_workdir, run_stage, write_params

# Noise that flooded the CPU run: transformers' GGUF conversion bar and peft's lookup warning.
NOISE = ("Converting and de-quantizing GGUF tensors", "Could not find a config file")


@pytest.mark.slow
def test_cpu_profile_shows_a_significant_adapter_vs_base_difference(tmp_path):
    work = make_workdir(tmp_path)
    write_params(work, {"profile": "cpu"})
    for stage in ("check", "prepare", "train", "evaluate_base", "evaluate"):
        proc = run_stage(work, stage)
        assert proc.returncode == 0, f"{stage}: {proc.stderr[-3000:]}"
        for noise in NOISE:
            assert noise not in proc.stderr, f"{stage} stderr has {noise!r}"
    metrics = json.loads((work / "metrics.json").read_text())
    task = metrics["addition"]
    print({k: (task[k]["accuracy"] if "accuracy" in task[k] else task[k]) for k in task})
    assert task["adapter"]["n"] == task["base"]["n"] == 32
    assert task["adapter_vs_base"]["ci_low"] > 0, task
    assert task["adapter_vs_base"]["p_value"] < 0.05, task
    assert task["adapter"]["format_rate"] >= 0.9, task
    # the shipped benchmarks' slices are reported beside it
    assert {"gsm8k", "math500", "aime24", "aime25", "amc23", "minerva_math"} <= set(metrics)
    assert "addition" in proc.stdout  # the comparison table the stage prints names the task
