"""`tinyreason recipe NAME [--queue] [--name N] [--dry-run] [-- dvc flags]`: options in any order, a
name unique per run, flags after `--` handed to `dvc exp run`, and a queued sweep DVC really queues."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO, shipped_params_path
from test_dvc_pipeline import DVC, make_dvc_repo, sh
from tinyreason.cli import main


def dry_run(capsys, *argv) -> list[str]:
    assert main(["recipe", "--params", str(shipped_params_path()), *argv]) == 0
    return shlex.split(capsys.readouterr().out.strip())


def test_options_in_any_order_and_dvc_flags_after_the_double_dash(capsys):
    sweep = "train.learning_rate=1e-6,2e-6"
    orders = [["open-rs2", "--dry-run", "--queue", "--", "-S", sweep],
              ["--queue", "--dry-run", "open-rs2", "--", "-S", sweep],
              ["--dry-run", "open-rs2", "--queue", "--", "-S", sweep]]
    commands = [dry_run(capsys, *argv) for argv in orders]
    for cmd in commands:
        assert cmd[:3] == ["dvc", "exp", "run"] and "--queue" in cmd
        assert cmd[-2:] == ["-S", sweep]  # last, so it wins over the preset's own learning rate
        assert re.fullmatch(r"tina-open-rs2-\d{8}-\d{6}-[0-9a-f]{4}", cmd[cmd.index("-n") + 1])
    names = [cmd[cmd.index("-n") + 1] for cmd in commands]
    assert len(set(names)) == len(names)  # unique per run, even within one second
    named = dry_run(capsys, "open-rs2", "--name", "my-lr-sweep", "--dry-run")
    assert named[named.index("-n") + 1] == "my-lr-sweep" and "--queue" not in named


def test_double_dash_elsewhere_is_left_to_argparse(capsys):
    """Only `recipe` splits at `--`: other subcommands parse it as argparse does."""
    import pytest

    with pytest.raises(SystemExit):
        main(["compare", "--", "-x", "y"])


def test_a_queued_sweep_is_queued_by_dvc(tmp_path, tiny_model_dir):
    repo = make_dvc_repo(tmp_path / "repo", tiny_model_dir)
    shutil.copytree(REPO / "recipes", repo / "recipes")  # `python -m tinyreason.cli` runs the repo's copy
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "tinyreason.cli", "recipe", "open-rs2", "--queue", "--name", "lr",
                           "--", "-S", "train.learning_rate=1e-6,2e-6"], cwd=repo, capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    status = sh(DVC + ["queue", "status"], repo)
    queued = sorted(re.findall(r"\blr-\d\b", status))
    assert queued == ["lr-1", "lr-2"] and status.count("Queued") == 2, status
    assert sh(["git", "status", "--porcelain", "--untracked-files=no"], repo) == ""  # the workspace is as it was
