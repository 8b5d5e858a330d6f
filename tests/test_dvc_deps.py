"""Every module a stage runs is a dependency of that stage in dvc.yaml, so editing it
makes `dvc repro` rerun the stage instead of serving stale results.

Static: parse stages/<stage>.py, follow every import of tinyreason (absolute or relative, at module
level or inside functions) through the package, and check each file reached is covered by a dep
(the file itself, or a directory above it: `tinyreason/engine` covers `tinyreason/engine/x.py`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from conftest import REPO

PACKAGE = "tinyreason"


def module_file(root: Path, dotted: str) -> Path | None:
    """tinyreason.x -> tinyreason/x.py, or tinyreason/x/__init__.py for a package; None otherwise
    (e.g. `tinyreason.config.load_config` names a function, not a module)."""
    base = root.joinpath(*dotted.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _package_of(root: Path, path: Path) -> list[str]:
    """The dotted package a file belongs to (what its relative imports are relative to)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return parts[:-1]  # tinyreason/x.py -> tinyreason; tinyreason/engine/__init__.py -> tinyreason.engine


def imported_names(root: Path, path: Path) -> set[str]:
    """Every module name an import in `path` may load, wherever the import statement sits."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = _package_of(root, path)
                base = package[:len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            names.add(module)
            # `from tinyreason import data` loads the submodule tinyreason.data
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def import_closure(root: Path, script: Path) -> set[Path]:
    """Files of `PACKAGE` (under `root`) that running `script` may import, parents included."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        for name in imported_names(root, todo.pop()):
            parts = name.split(".")
            if parts[0] != PACKAGE:
                continue
            # importing a.b.c runs a/__init__.py and a/b/__init__.py first
            for i in range(1, len(parts) + 1):
                found = module_file(root, ".".join(parts[:i]))
                if found is not None and found not in seen:
                    seen.add(found)
                    todo.append(found)
    return {p.relative_to(root) for p in seen}


def uncovered(files: set[Path], deps: list[str]) -> list[str]:
    dep_paths = [Path(d.rstrip("/")) for d in deps]
    return sorted(str(f) for f in files if not any(f == d or d in f.parents for d in dep_paths))


def stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(stages()))
def test_stage_deps_cover_every_module_the_stage_imports(stage):
    spec = stages()[stage]
    script = REPO / "stages" / f"{stage}.py"
    assert f"stages/{stage}.py" in spec["deps"], f"{stage}: the stage script is not a dep"
    gone = [d for d in spec["deps"] if not (REPO / d).exists() and not d.startswith("data/prepared/")
            and d not in {o if isinstance(o, str) else next(iter(o)) for st in stages().values()
                          for o in st.get("outs", [])}]
    assert not gone, f"dvc.yaml stage {stage!r} depends on {gone}, which do not exist (moved? a package now?)"
    missing = uncovered(import_closure(REPO, script), spec["deps"])
    assert not missing, (f"dvc.yaml stage {stage!r} runs {missing} but does not list them under deps: "
                         "add them, or editing them leaves `dvc repro` 'up to date' with stale outputs")


def test_closure_follows_function_level_relative_and_package_imports(tmp_path):
    """The walker on a made-up package: imports inside functions, relative imports, a subpackage
    (as tinyreason/generation.py may become tinyreason/engine/), and names that are not modules."""
    pkg = tmp_path / PACKAGE
    (pkg / "engine").mkdir(parents=True)
    files = {
        "stages/s.py": "from tinyreason import a\nfrom tinyreason.config import load_config\n",
        "tinyreason/__init__.py": "",
        "tinyreason/a.py": "def f():\n    from . import b\n",
        "tinyreason/b.py": "import json\nfrom .engine.scheduler import run\n",
        "tinyreason/config.py": "load_config = None\n",
        "tinyreason/engine/__init__.py": "from .core import x\n",
        "tinyreason/engine/core.py": "x = 1\n",
        "tinyreason/engine/scheduler.py": "from ..c import y\n",
        "tinyreason/c.py": "y = 2\n",
        "tinyreason/unused.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    closure = import_closure(tmp_path, tmp_path / "stages/s.py")
    assert {str(p) for p in closure} == {
        "tinyreason/__init__.py", "tinyreason/a.py", "tinyreason/b.py", "tinyreason/c.py",
        "tinyreason/config.py", "tinyreason/engine/__init__.py", "tinyreason/engine/core.py",
        "tinyreason/engine/scheduler.py"}
    # a directory dep covers the package; a missing module is reported by name
    deps = ["stages/s.py", "tinyreason/__init__.py", "tinyreason/a.py", "tinyreason/b.py",
            "tinyreason/config.py", "tinyreason/engine"]
    assert uncovered(closure, deps) == ["tinyreason/c.py"]


def test_grpo_training_files_live_in_a_train_stage_dependency():
    """A local train.grpo.train_path must be under checks.GRPO_DATA_DIR (the check stage refuses others,
    tests/test_bad_inputs.py), so that directory must be a dep of train, and of check, which reads the file."""
    from tinyreason.checks import GRPO_DATA_DIR

    for stage in ("check", "train"):
        assert GRPO_DATA_DIR.as_posix() in stages()[stage]["deps"], stage


def test_base_evaluation_depends_on_nothing_from_training():
    """Issue 26: evaluate_base reads every param that shapes the base model's answers (all evaluate.* keys
    but evaluation.NOT_BASE_INPUTS, the model, the seed, the profile) and nothing training writes or reads,
    so `dvc exp run -S train.x=...` skips it; evaluate pairs the adapter with its output."""
    import dataclasses

    from tinyreason.config import EvaluateConfig
    from tinyreason.evaluation import NOT_BASE_INPUTS
    from tinyreason.paths import BASE_EVAL

    base, train, evaluate = stages()["evaluate_base"], stages()["train"], stages()["evaluate"]
    shaping = {f"evaluate.{f.name}" for f in dataclasses.fields(EvaluateConfig) if f.name not in NOT_BASE_INPUTS}
    assert shaping <= set(base["params"]), sorted(shaping - set(base["params"]))
    assert not {p for p in base["params"] if p.startswith("evaluate.") and p not in shaping}
    assert {"profile", "seed", "model"} <= set(base["params"])
    assert not [p for p in base["params"] if p.split(".")[0] in ("train", "prepare", "cost")]
    train_outs = {o if isinstance(o, str) else next(iter(o)) for o in train["outs"] + train.get("metrics", [])}
    assert not train_outs & set(base["deps"]), train_outs & set(base["deps"])
    assert "data/prepared/test.jsonl" in base["deps"] and not [d for d in base["deps"] if "train" in d]
    assert base["outs"] == [BASE_EVAL.as_posix()] and BASE_EVAL.as_posix() in evaluate["deps"]
