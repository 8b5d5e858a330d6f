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


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory, tiny_model_dir):
    work = tmp_path_factory.mktemp("dvc") / "repo"
    work.mkdir()
    for name in ("stages", "tinyreason", "configs"):
        shutil.copytree(REPO / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("raw", "benchmarks"):
        shutil.copytree(REPO / "data" / name, work / "data" / name)
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, work / name)
    write_params(work, tiny_run_overrides(tiny_model_dir, train={"max_steps": 4}))
    sh(["git", "init", "-q"], work)
    sh(["git", "config", "user.email", "t@t"], work)
    sh(["git", "config", "user.name", "t"], work)
    sh(DVC + ["init", "-q"], work)
    sh(["git", "add", "-A"], work)
    sh(["git", "commit", "-qm", "init"], work)
    return work


@pytest.mark.slow
def test_repro_then_noop_then_only_dependent_stages(dvc_repo):
    out = sh(DVC + ["repro"], dvc_repo)
    for stage in ("prepare", "train", "evaluate"):
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
    assert "Running stage 'train'" not in changed and "Running stage 'prepare'" not in changed

    show = sh(DVC + ["plots", "show", "--json"], dvc_repo)
    assert "train/loss.tsv" in show and "eval/loss.tsv" in show
