"""A bad value given to `dvc exp run -S` stays in params.yaml after the check stage refuses it (DVC writes
the -S values before running). The refusal says so and how to undo it, and so does every later run that
fails on it, so a new user is never left chasing an old mistake. Real `dvc exp run` in a scratch repo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from test_dvc_pipeline import DVC, make_dvc_repo, sh


def exp_run(repo: Path, *overrides: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = DVC + ["exp", "run"] + [a for o in overrides for a in ("-S", o)]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode != 0, f"{overrides} did not fail:\n{proc.stdout[-2000:]}"
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    return errors[0]


@pytest.mark.slow
def test_a_refused_exp_run_value_names_where_it_came_from_and_the_undo(tmp_path, tiny_model_dir):
    repo = make_dvc_repo(tmp_path / "repo", tiny_model_dir)
    first = exp_run(repo, "train.learning_rate=-1")
    assert "train.learning_rate" in first and "out of range" in first
    assert "train.learning_rate=-1 is not the committed value" in first and "git checkout params.yaml" in first
    assert "learning_rate: -1" in (repo / "params.yaml").read_text()  # what DVC wrote, still there
    # the next run changes something else and fails on the old mistake: the error says that is what it is
    second = exp_run(repo, "prepare.num_samples=30")
    assert "train.learning_rate=-1 is not the committed value" in second
    sh(["git", "checkout", "params.yaml"], repo)
    # a mistake in a value that is as committed gets no such note (there is nothing to undo)
    sh([sys.executable, "-c", "import pathlib; p = pathlib.Path('params.yaml'); "
        "p.write_text(p.read_text().replace('max_steps: 4', 'max_steps: 0'))"], repo)
    sh(["git", "commit", "-qam", "a committed mistake"], repo)
    third = exp_run(repo, "prepare.num_samples=30")
    assert "train.max_steps" in third and "not the committed value" not in third
