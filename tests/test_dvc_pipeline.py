"""The DVC DAG as users drive it: `dvc repro` runs prepare -> train -> evaluate, a second repro does
nothing, and changing one param re-runs only the stages that read it; `dvc metrics diff` shows
base vs adapter. Runs in a scratch git repo on the tiny random model (seconds per stage)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, tiny_run_overrides, write_params

DVC = [sys.executable, "-m", "dvc"]


def sh(cmd, cwd, timeout=900):
    # Stage commands say `python`: make that the interpreter running the tests.
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def make_dvc_repo(work: Path, model_dir: Path) -> Path:
    """A scratch git + DVC repo holding the pipeline, with params for the tiny random model."""
    work.mkdir(parents=True)
    for name in ("stages", "tinyreason", "configs"):
        shutil.copytree(REPO / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("raw", "benchmarks"):
        shutil.copytree(REPO / "data" / name, work / "data" / name)
    for name in ("dvc.yaml", ".gitignore", "prompts.yaml", "profiles.yaml"):
        shutil.copy(REPO / name, work / name)
    write_params(work, tiny_run_overrides(model_dir, train={"max_steps": 4}))
    sh(["git", "init", "-q"], work)
    sh(["git", "config", "user.email", "t@t"], work)
    sh(["git", "config", "user.name", "t"], work)
    sh(DVC + ["init", "-q"], work)
    sh(["git", "add", "-A"], work)
    sh(["git", "commit", "-qm", "init"], work)
    return work


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory, tiny_model_dir):
    return make_dvc_repo(tmp_path_factory.mktemp("dvc") / "repo", tiny_model_dir)


@pytest.mark.slow
def test_repro_then_noop_then_only_dependent_stages(dvc_repo):
    out = sh(DVC + ["repro"], dvc_repo)
    for stage in ("check", "prepare", "train", "evaluate"):
        assert f"Running stage '{stage}'" in out
    assert (dvc_repo / "metrics.json").is_file()
    assert (dvc_repo / "models/adapter/adapter_model.safetensors").is_file()

    again = sh(DVC + ["repro"], dvc_repo)
    assert "Running stage" not in again

    diff = sh(DVC + ["metrics", "diff", "--all", "--md"], dvc_repo)
    assert "gsm8k.adapter.accuracy" in diff and "gsm8k.base.accuracy" in diff
    assert "gsm8k.adapter_vs_base.p_value" in diff

    sh(["git", "add", "-A"], dvc_repo)
    sh(["git", "commit", "-qm", "baseline"], dvc_repo)
    changed = sh(DVC + ["exp", "run", "-S", "evaluate.max_new_tokens=4"], dvc_repo)
    assert "Running stage 'evaluate'" in changed
    # check validates every param (its output does not change), then only evaluate reads this one
    assert "Running stage 'train'" not in changed and "Running stage 'prepare'" not in changed

    show = sh(DVC + ["plots", "show", "--json"], dvc_repo)
    assert "train/loss.tsv" in show and "eval/loss.tsv" in show


# A failed run loses nothing. Every output of the pipeline, compared byte for byte.
OUTPUTS = ("data/prepared", "models/adapter", "metrics/train.json", "metrics/prepare.json", "dvclive",
           "predictions", "metrics.json", "metrics/evaluate.json")
BAD_INPUTS = [
    (["train.learning_rate=fast"], "train.learning_rate: expected a number"),
    (["prepare.train_path=data/raw/gsm8k/nope.jsonl"], "data/raw/gsm8k/nope.jsonl: data file not found"),
    (["profile=gpu-huge"], "profile: 'gpu-huge' has no section under profiles"),
    (["model.name_or_path=./no/such/model"], "model.name_or_path: './no/such/model' is not a directory"),
    (["+evaluate.benchmarks.gsm8k.path=data/benchmarks/gsm8k/nope.jsonl"], "evaluate.benchmarks.gsm8k.path"),
]


def output_bytes(repo: Path) -> dict:
    found = {}
    for name in OUTPUTS:
        root = repo / name
        for path in [root] if root.is_file() else sorted(root.rglob("*")):
            if path.is_file():
                found[str(path.relative_to(repo))] = path.read_bytes()
    return found


@pytest.mark.slow
def test_a_failed_run_loses_no_earlier_output(tmp_path, tiny_model_dir):
    repo = make_dvc_repo(tmp_path / "repo", tiny_model_dir)
    sh(DVC + ["repro"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "results"], repo)
    before = output_bytes(repo)
    assert {"models/adapter/adapter_model.safetensors", "metrics/train.json", "metrics.json",
            "data/prepared/train.jsonl", "data/prepared/test.jsonl"} <= before.keys()
    assert any(k.startswith("dvclive/train/") for k in before)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for overrides, message in BAD_INPUTS:
        cmd = DVC + ["exp", "run"] + [a for o in overrides for a in ("-S", o)]
        proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode != 0, f"{overrides} did not fail:\n{proc.stdout[-2000:]}"
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], (overrides, proc.stdout[-2000:], proc.stderr[-2000:])
        after = output_bytes(repo)
        assert after.keys() == before.keys(), f"{overrides}: lost {sorted(before.keys() - after.keys())[:5]}"
        changed = [k for k in before if after[k] != before[k]]
        assert not changed, f"{overrides}: changed {changed[:5]}"
        sh(["git", "checkout", "--", "params.yaml"], repo)  # what `dvc exp run -S` wrote
    # A failed check removed only its own checks/passed.json: the next repro redoes the check, which
    # writes the same bytes, so no later stage reruns and every result stands.
    again = sh(DVC + ["repro"], repo)
    assert [line for line in again.splitlines() if line.startswith("Running stage")] == ["Running stage 'check':"]
    assert output_bytes(repo) == before
