"""Reliability: a train stage killed with SIGKILL resumes from its last complete checkpoint
and ends bit-identical to an uninterrupted run; a killed or failing stage never leaves an output
that looks complete; outputs.atomic_* leave nothing behind when a write fails midway.

One uninterrupted reference run and one run killed twice (then finished) share a module fixture.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, make_workdir, run_stage, shipped_params, tiny_run_overrides, write_params

SECRET = "hf_fake_secret_123"
ENV = {"HF_TOKEN": SECRET}
MAX_STEPS = 10  # leaves 6+ steps after the last kill point, so the kill lands mid-run on a fast machine
KILL_AFTER = (2, 4)  # the killed run is SIGKILLed shortly after checkpoint-2, its resume after checkpoint-4
STAGE_OUTPUTS = ("models/adapter", "metrics/train.json", "dvclive/train")


def overrides(model_dir: Path) -> dict:
    return tiny_run_overrides(
        model_dir,
        prepare={"num_samples": 16, "val_fraction": 0.25},
        train={"max_steps": MAX_STEPS, "max_length": 256, "per_device_train_batch_size": 2,
               "gradient_accumulation_steps": 1, "eval_steps": 2, "save_steps": 2, "save_total_limit": 3,
               "warmup_steps": 1},
    )


def log_to(work: Path, name: str, proc) -> None:
    """Keep each run's console output in the work dir (the secret scan reads it too)."""
    (work / "logs").mkdir(exist_ok=True)
    (work / "logs" / f"{name}.log").write_text((proc.stdout or "") + (proc.stderr or ""))


def train_then_kill(work: Path, step: int, rng: random.Random, timeout: float = 300) -> dict:
    """Start the train stage, SIGKILL it a random moment after checkpoint-`step` is complete."""
    log_file = (work / "logs" / f"killed-after-{step}.log").open("w")
    proc = subprocess.Popen([sys.executable, "stages/train.py"], cwd=work, stdout=log_file,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO), **ENV})
    deadline = time.monotonic() + timeout
    try:
        while not list(work.glob(f"checkpoints/*/checkpoint-{step}/trainer_state.json")):
            assert proc.poll() is None, f"train exited ({proc.returncode}) before checkpoint-{step}"
            assert time.monotonic() < deadline, f"no checkpoint-{step} after {timeout} s"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.05))  # somewhere in the next step
        assert proc.poll() is None, f"train finished before it could be killed after checkpoint-{step}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        log_file.close()
        if proc.poll() is None:
            proc.kill()
    return {"returncode": proc.returncode, "present": [p for p in STAGE_OUTPUTS if (work / p).exists()],
            "checkpoints": sorted(p.name for p in work.glob("checkpoints/*/checkpoint-*"))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    reference = make_workdir(tmp_path_factory.mktemp("reference"))
    write_params(reference, overrides(tiny_model_dir))
    proc = run_stage(reference, "prepare", env=ENV)
    log_to(reference, "prepare", proc)
    assert proc.returncode == 0, proc.stderr

    killed = make_workdir(tmp_path_factory.mktemp("killed"))
    shutil.copy(reference / "params.yaml", killed / "params.yaml")
    shutil.copytree(reference / "data" / "prepared", killed / "data" / "prepared")
    (killed / "logs").mkdir()

    proc = run_stage(reference, "train", env=ENV)
    log_to(reference, "train", proc)
    assert proc.returncode == 0, proc.stderr

    rng = random.Random()
    kills = [train_then_kill(killed, step, rng) for step in KILL_AFTER]
    proc = run_stage(killed, "train", env=ENV)
    log_to(killed, "train-resumed", proc)
    assert proc.returncode == 0, proc.stderr
    return {"reference": reference, "killed": killed, "kills": kills}


def adapter_tensors(work: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(work / "models" / "adapter" / "adapter_model.safetensors")


def log_history(work: Path) -> list[dict]:
    (state,) = work.glob(f"checkpoints/*/checkpoint-{MAX_STEPS}/trainer_state.json")
    return json.loads(state.read_text())["log_history"]


TIMING_KEYS = ("runtime", "per_second")
# TRL SFTTrainer's running token count restarts at 0 on resume (it is not in the checkpoint; axolotl
# reports the same of TRL, axolotl-ai-cloud/axolotl#3291); Trainer's num_input_tokens_seen resumes and
# is compared, and the stage's DVCLive curves leave num_tokens out (tinyreason/tracking.py).
SESSION_COUNTERS = ("num_tokens",)


def without_timings(entries: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items()
             if not any(k.endswith(t) for t in TIMING_KEYS) and k.removeprefix("eval_") not in SESSION_COUNTERS}
            for e in entries]


@pytest.mark.slow
def test_sigkill_leaves_no_output_that_looks_complete(runs):
    for step, kill in zip(KILL_AFTER, runs["kills"]):
        assert kill["returncode"] == -signal.SIGKILL, kill
        assert kill["present"] == [], f"killed after checkpoint-{step}, yet {kill['present']} exist"
        assert f"checkpoint-{step}" in kill["checkpoints"]
    # what a killed writer left behind is cleaned up by the next run
    killed = runs["killed"]
    assert not list(killed.glob("models/.adapter.*")) and not list(killed.glob("dvclive/.train.*"))


@pytest.mark.slow
def test_resumed_run_is_bit_identical_to_uninterrupted(runs):
    ref, resumed = runs["reference"], runs["killed"]
    metrics = json.loads((resumed / "metrics" / "train.json").read_text())
    assert metrics["resumed_from_step"] >= KILL_AFTER[-1], "the final run did not resume"
    assert "resuming from" in (resumed / "logs" / "train-resumed.log").read_text()

    a, b = adapter_tensors(ref), adapter_tensors(resumed)
    assert a.keys() == b.keys() and a
    different = [k for k in a if not a[k].equal(b[k])]
    assert not different, f"adapter tensors differ after resume: {different[:3]}"

    ref_metrics = json.loads((ref / "metrics" / "train.json").read_text())
    for key in ("steps", "final_train_loss", "best_eval_loss", "best_checkpoint_step", "train_tokens"):
        assert metrics[key] == ref_metrics[key], key
    # every logged loss, grad norm, lr, eval loss: the same floats, step by step
    assert without_timings(log_history(resumed)) == without_timings(log_history(ref))


@pytest.mark.slow
def test_resumed_dvclive_curves_match_uninterrupted(runs):
    """DVCLive starts a fresh directory on resume: the curves before the checkpoint are replayed."""
    ref_plots = runs["reference"] / "dvclive" / "train" / "plots" / "metrics"
    resumed_plots = runs["killed"] / "dvclive" / "train" / "plots" / "metrics"
    for name in ("train/loss.tsv", "train/learning_rate.tsv", "train/grad_norm.tsv", "eval/loss.tsv"):
        expected = (ref_plots / name).read_text()
        assert expected.count("\n") > 2, name
        assert (resumed_plots / name).read_text() == expected, name


@pytest.mark.slow
def test_no_secret_in_any_file_of_killed_and_resumed_runs(runs):
    """HF_TOKEN was in the environment of every run: it must not reach params, logs, dvclive,
    metrics, the adapter or any checkpoint (including those of killed runs)."""
    for work in (runs["reference"], runs["killed"]):
        leaked = [str(p.relative_to(work)) for p in work.rglob("*")
                  if p.is_file() and SECRET.encode() in p.read_bytes()]
        assert not leaked, f"{SECRET} written to {leaked}"


def test_incomplete_newest_checkpoint_is_skipped(tmp_path, monkeypatch):
    """A checkpoint killed while being written (no or truncated trainer_state.json) is removed, so
    the run resumes from the newest complete one instead of starting over."""
    from tinyreason import checkpoints

    root = tmp_path / "ckpt"
    (root / "checkpoint-2").mkdir(parents=True)
    (root / "speed_plan.json").write_text('{"speed": "fa')  # killed mid-write: recomputed on resume
    for step, state in ((2, '{"log_history": []}'), (4, None), (6, '{"log_hist')):
        (root / f"checkpoint-{step}").mkdir(parents=True, exist_ok=True)
        (root / f"checkpoint-{step}" / "adapter_model.safetensors").write_bytes(b"x")
        if state is not None:
            (root / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    checkpoints.drop_incomplete_checkpoints(root)
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-2"]  # and no truncated speed plan
    assert checkpoints.last_checkpoint(root) == str(root / "checkpoint-2")


# ---------------------------------------------------------------------------------------------
# outputs.atomic_*: a failure midway leaves the old output (or nothing) and no temporary files


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_atomic_write_text_disk_full_keeps_old_file(tmp_path, monkeypatch):
    from tinyreason import outputs
    from tinyreason.errors import TinyReasonError

    target = tmp_path / "metrics.json"
    outputs.atomic_write_json(target, {"old": 1})
    monkeypatch.setattr(outputs.os, "fsync", _disk_full)
    with pytest.raises(TinyReasonError) as err:
        outputs.atomic_write_json(target, {"new": 2})
    assert str(tmp_path / "metrics.json") in str(err.value) and "no space left" in str(err.value)
    assert "\n" not in str(err.value)
    assert json.loads(target.read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_atomic_write_jsonl_failing_midway_writes_nothing(tmp_path):
    from tinyreason import outputs

    def rows():
        yield {"a": 1}
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError):
        outputs.atomic_write_jsonl(tmp_path / "rows.jsonl", rows())
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_failure_keeps_old_directory(tmp_path):
    from tinyreason import outputs

    target = tmp_path / "adapter"
    with outputs.atomic_directory(target) as out:
        (out / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with outputs.atomic_directory(target) as out:
            (out / "weights").write_text("v2-partial")
            raise RuntimeError("killed mid-save")
    assert (target / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    with outputs.atomic_directory(target) as out:
        (out / "weights").write_text("v2")
    assert (target / "weights").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_atomic_directory_sigkill_midway_then_rerun(tmp_path):
    """A real SIGKILL inside atomic_directory: no `adapter/`, and the next writer cleans up."""
    code = ("import os, signal, sys\n"
            "from tinyreason.outputs import atomic_directory, atomic_write_text\n"
            "with atomic_directory(sys.argv[1]) as out:\n"
            "    atomic_write_text(out / 'adapter_config.json', '{}')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "adapter")], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "adapter").exists()
    assert [p.name.startswith(".adapter.") for p in tmp_path.iterdir()] == [True]  # the leftover

    from tinyreason import outputs

    with outputs.atomic_directory(tmp_path / "adapter") as out:
        (out / "adapter_config.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_atomic_directory_disk_full_is_one_line(tmp_path):
    from tinyreason import outputs
    from tinyreason.errors import TinyReasonError

    with pytest.raises(TinyReasonError) as err:
        with outputs.atomic_directory(tmp_path / "adapter"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert "adapter" in str(err.value) and "free disk space" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_atomic_outputs_get_ordinary_permissions(tmp_path):
    import os
    import stat

    from tinyreason.outputs import atomic_directory, atomic_write_text

    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "metrics.json", "{}")
        with atomic_directory(tmp_path / "adapter") as out:
            (out / "weights").write_text("x")
        assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o644
        assert stat.S_IMODE((tmp_path / "adapter").stat().st_mode) == 0o755
    finally:
        os.umask(mask)


# ---------------------------------------------------------------------------------------------
# Rerunning a finished train stage gives the same outputs as the first run


def train_outputs(work: Path) -> dict:
    """Everything the train stage writes, timings left out: adapter bytes, metrics, DVCLive files."""
    def timed(name: str) -> bool:
        return any(t in name for t in TIMING_KEYS)

    def untimed(tree):
        return {k: untimed(v) for k, v in tree.items() if not timed(k)} if isinstance(tree, dict) else tree

    out = {str(p.relative_to(work)): p.read_bytes() for root in ("models/adapter", "dvclive/train")
           for p in sorted((work / root).rglob("*")) if p.is_file() and not timed(p.name)}
    metrics = json.loads((work / "metrics" / "train.json").read_text())
    metrics.pop("cost")
    out["metrics/train.json"] = untimed(metrics)
    out["dvclive/train/metrics.json"] = untimed(json.loads(out["dvclive/train/metrics.json"]))
    return out


@pytest.mark.slow
def test_rerunning_a_finished_train_stage_gives_the_same_outputs(tmp_path, tiny_model_dir):
    work = make_workdir(tmp_path)
    write_params(work, tiny_run_overrides(tiny_model_dir, prepare={"num_samples": 16, "val_fraction": 0.25},
                                          train={"max_steps": 4, "gradient_accumulation_steps": 1}))
    for stage in ("prepare", "train"):
        proc = run_stage(work, stage)
        assert proc.returncode == 0, proc.stderr[-2000:]
    first = train_outputs(work)
    assert first["metrics/train.json"]["steps"] == 4
    for _ in range(2):  # as `dvc repro -f train` does: the same command, checkpoints/ kept
        proc = run_stage(work, "train")
        assert proc.returncode == 0, proc.stderr[-2000:]
        again = train_outputs(work)
        assert again["metrics/train.json"] == first["metrics/train.json"]
        assert again.keys() == first.keys()
        changed = [k for k in first if again[k] != first[k]]
        assert not changed, f"a rerun of the finished stage changed {changed}"


def test_finished_run_checkpoints_are_dropped_unfinished_kept(tmp_path):
    from tinyreason import checkpoints
    from tinyreason.config import config_from_dict

    def cfg(max_steps: int):
        raw = shipped_params()
        raw["train"]["max_steps"] = max_steps
        return config_from_dict(raw)

    root = tmp_path / "ckpt"
    for step in (2, 4):
        (root / f"checkpoint-{step}").mkdir(parents=True)
        (root / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    checkpoints.drop_finished_run(root, cfg(6))  # not finished: a rerun resumes from step 4
    assert checkpoints.last_checkpoint(root) == str(root / "checkpoint-4")
    checkpoints.drop_finished_run(root, cfg(4))  # finished at its max_steps: a rerun starts over
    assert not root.exists() and checkpoints.last_checkpoint(root) is None
