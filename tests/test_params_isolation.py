"""The tests do not depend on the workspace's params.yaml, which `dvc exp run -S
profile=cpu` (the README's `bash scripts/run.sh` without a GPU) rewrites. They read the shipped
params through conftest.shipped_params*, or write their own."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

# Tests that read the repository's params (they failed after `dvc exp run -S profile=cpu`).
PARAMS_READERS = [
    "tests/test_config.py",
    "tests/test_grpo.py::test_defaults_are_the_tina_recipe",
    "tests/test_grpo.py::test_recipe_dry_run_prints_the_dvc_command",
    "tests/test_grpo.py::test_recipe_flags_applied_by_dvc_give_the_preset_config",
    "tests/test_distributed.py::test_num_gpus_default_and_validation",
    "tests/test_safety.py::test_params_default_keeps_remote_code_off",
    "tests/test_chat.py::test_profile_flag_resolves_cpu_model_and_model_flag_overrides",
    "tests/test_eval_protocol.py::test_shipped_params_batch_size_means_requests_in_flight",
    "tests/test_eval_protocol.py::test_eval_tina_overlay_loads_with_tinas_protocol",
    "tests/test_eval_protocol.py::test_recipe_list_shows_presets_then_overlays",
]


def workspace_params_reads(path: Path) -> list[int]:
    """Lines of `path` that name the workspace's params.yaml: `REPO / "params.yaml"`, or a bare
    "params.yaml" passed to something that opens it (relative to the repo root, where pytest runs)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.left, ast.Name)
                and node.left.id == "REPO" and isinstance(node.right, ast.Constant) and node.right.value == "params.yaml"):
            lines.append(node.lineno)
        elif (isinstance(node, ast.Call) and _called_name(node) in READERS
              and any(isinstance(a, ast.Constant) and a.value == "params.yaml" for a in node.args)):
            lines.append(node.lineno)
    return sorted(lines)


READERS = {"open", "Path", "load_config", "resolve_config", "copy", "copyfile"}


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def test_no_test_module_reads_the_workspace_params():
    offenders = {str(p.relative_to(REPO)): workspace_params_reads(p)
                 for p in sorted((REPO / "tests").glob("*.py")) if p.name != "conftest.py"}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, (f"{offenders}: these lines read the workspace's params.yaml, which `dvc exp run` "
                           "rewrites; use conftest.shipped_params / shipped_params_path instead")


def test_the_check_sees_a_workspace_read(tmp_path):
    probe = tmp_path / "test_probe.py"
    probe.write_text('from conftest import REPO\nA = (REPO / "params.yaml").read_text()\n'
                     'B = load_config("params.yaml")\nC = work / "params.yaml"\n'
                     'assert_one_line(err, "params.yaml", "train.max_steps")\n')
    assert workspace_params_reads(probe) == [2, 3]


def snapshot(dest: Path) -> Path:
    """This checkout's files (tracked, and untracked but not ignored) committed into a scratch repo."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    for cmd in (["init", "-q"], ["add", "-A"],
                ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "snapshot"]):
        subprocess.run(["git", *cmd], cwd=dest, check=True, capture_output=True)
    return dest


def test_params_readers_pass_after_dvc_exp_run_rewrote_params(tmp_path):
    """In a scratch clone, params.yaml is rewritten exactly as `dvc exp run -S profile=cpu` leaves
    it (DVC's own override code: profile cpu, reformatted); the tests that read params still pass."""
    from dvc.utils.hydra import apply_overrides

    clone = snapshot(tmp_path / "clone")
    apply_overrides(clone / "params.yaml", ["profile=cpu"])
    assert "profile: cpu" in (clone / "params.yaml").read_text()
    env = {**os.environ, "PYTHONPATH": str(clone), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                           *PARAMS_READERS], cwd=clone, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout, proc.stdout[-500:]
