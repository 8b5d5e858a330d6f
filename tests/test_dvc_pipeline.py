"""The DVC DAG as users drive it: `dvc repro` runs prepare -> train, evaluate_base -> evaluate, a second
repro does nothing, and changing one param re-runs only the stages that read it (a training param never
reruns the base model's evaluation); `dvc metrics diff` shows base vs adapter. Runs in a scratch git repo
on the tiny random model (seconds per stage)."""

from __future__ import annotations

import json
import os
import re
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


def make_dvc_repo(work: Path, model_dir: Path, **sections) -> Path:
    """A scratch git + DVC repo holding the pipeline, with params for the tiny random model (and `sections`
    merged over them)."""
    work.mkdir(parents=True)
    for name in ("stages", "tinyreason", "configs"):
        shutil.copytree(REPO / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("raw", "benchmarks"):
        shutil.copytree(REPO / "data" / name, work / "data" / name)
    for name in ("dvc.yaml", ".gitignore", "prompts.yaml", "profiles.yaml"):
        shutil.copy(REPO / name, work / name)
    write_params(work, tiny_run_overrides(model_dir, train={"max_steps": 4}, **sections))
    sh(["git", "init", "-q"], work)
    sh(["git", "config", "user.email", "t@t"], work)
    sh(["git", "config", "user.name", "t"], work)
    sh(DVC + ["init", "-q"], work)
    sh(["git", "add", "-A"], work)
    sh(["git", "commit", "-qm", "init"], work)
    return work


def stages_run(log: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w-]+)'", log))


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory, tiny_model_dir):
    """After `dvc repro`, sampling (temperature > 0, 2 samples) so that seeds matter."""
    repo = make_dvc_repo(tmp_path_factory.mktemp("dvc") / "repo", tiny_model_dir,
                         evaluate={"temperature": 0.8, "samples": 2})
    assert stages_run(sh(DVC + ["repro"], repo)) == {"check", "prepare", "train", "evaluate_base", "evaluate"}
    return repo


def single_stage_evaluation(repo: Path) -> tuple[dict, dict]:
    """What the evaluate stage computed before the base model got its own stage (issue 26), in one
    process: the base model, then the adapter next to it, then the metrics of both."""
    from tinyreason import evaluation, modeling
    from tinyreason.config import load_config

    cfg = load_config(repo / "params.yaml")  # the scratch repo's (the test runs there)
    rows = evaluation.load_test_rows(repo / "data/prepared/test.jsonl")
    tokenizer = modeling.load_tokenizer(cfg.model)
    records = {"base": evaluation.predict(modeling.load_base_model(cfg.model), tokenizer, cfg, rows, "base")}
    adapter = modeling.load_adapter_model(cfg.model, repo / "models/adapter", merge=True)
    records["adapter"] = evaluation.predict(adapter, tokenizer, cfg, rows, "adapter")
    samples = {r["benchmark"]: cfg.evaluate.samples_of(r["benchmark"]) for r in rows}
    return json.loads(json.dumps(evaluation.build_metrics(records, samples))), records


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_two_stage_evaluation_equals_the_single_stage_one(dvc_repo, monkeypatch):
    """Issue 26: base answers sampled in evaluate_base are the ones the base model gave next to the
    adapter (per-call seeds), so metrics.json (paired test included) and predictions/ are today's."""
    monkeypatch.chdir(dvc_repo)
    metrics, records = single_stage_evaluation(dvc_repo)
    assert json.loads((dvc_repo / "metrics.json").read_text()) == metrics
    assert set(metrics["gsm8k"]) == {"base", "adapter", "adapter_vs_base"}
    assert read_jsonl(dvc_repo / "predictions/gsm8k.jsonl") == records["base"] + records["adapter"]
    assert read_jsonl(dvc_repo / "base_eval/predictions/gsm8k.jsonl") == records["base"]
    base_metrics = json.loads((dvc_repo / "base_eval/metrics.json").read_text())
    assert base_metrics == {"gsm8k": {"base": metrics["gsm8k"]["base"]}}
    # sampling is on: a problem's two samples differ somewhere, so equal answers mean equal seeds
    outputs = {(r["id"], r["sample"]): r["output"] for r in records["base"]}
    assert any(outputs[i, 0] != outputs[i, 1] for i, _ in outputs)


@pytest.mark.slow
def test_repro_then_noop_then_only_dependent_stages(dvc_repo):
    assert (dvc_repo / "metrics.json").is_file()
    assert (dvc_repo / "models/adapter/adapter_model.safetensors").is_file()

    again = sh(DVC + ["repro"], dvc_repo)
    assert "Running stage" not in again

    diff = sh(DVC + ["metrics", "diff", "--all", "--md"], dvc_repo)
    assert "gsm8k.adapter.accuracy" in diff and "gsm8k.base.accuracy" in diff
    assert "gsm8k.adapter_vs_base.p_value" in diff

    sh(["git", "add", "-A"], dvc_repo)
    sh(["git", "commit", "-qm", "baseline"], dvc_repo)
    # Issue 26: a training param reruns train and evaluate; the base model's answers stay as they are.
    # (check validates every param; its output does not change, so nothing downstream of it reruns.)
    trained = sh(DVC + ["exp", "run", "-S", "train.learning_rate=1e-3"], dvc_repo)
    assert stages_run(trained) == {"check", "train", "evaluate"}
    assert "Stage 'evaluate_base' didn't change, skipping" in trained
    # an evaluate param reruns both evaluations, not training
    changed = sh(DVC + ["exp", "run", "-S", "evaluate.max_new_tokens=4"], dvc_repo)
    assert stages_run(changed) == {"check", "evaluate_base", "evaluate"}
    # back to the committed value: the base model's answers come from DVC's run cache, not the model
    back = sh(DVC + ["exp", "run", "-S", "evaluate.max_new_tokens=8"], dvc_repo)
    assert "Stage 'evaluate_base' is cached - skipping run, checking out outputs" in back
    assert "evaluate_base" not in stages_run(back)

    show = sh(DVC + ["plots", "show", "--json"], dvc_repo)
    assert "train/loss.tsv" in show and "eval/loss.tsv" in show


# A failed run loses nothing. Every output of the pipeline, compared byte for byte.
OUTPUTS = ("data/prepared", "models/adapter", "metrics/train.json", "metrics/prepare.json", "dvclive",
           "predictions", "metrics.json", "metrics/evaluate.json", "base_eval", "metrics/evaluate_base.json")
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
