"""Determinism: the whole pipeline (prepare -> train -> evaluate) run twice with one seed,
in separate processes, gives identical prepared data, adapter, train losses and metrics.json on CPU;
another seed changes the data split and the training result.

The runs also carry HF_TOKEN in their environment, and a test checks it is written nowhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_workdir, run_stage, tiny_run_overrides, write_params

SEED, OTHER_SEED = 3407, 11
SECRET = "hf_fake_secret_123"
ENV = {"HF_TOKEN": SECRET}


def overrides(model_dir: Path, seed: int) -> dict:
    return tiny_run_overrides(
        model_dir,
        seed=seed,
        prepare={"num_samples": 12, "val_fraction": 0.25},
        train={"max_steps": 2, "max_length": 256, "per_device_train_batch_size": 2,
               "gradient_accumulation_steps": 1, "eval_steps": 2, "save_steps": 2, "warmup_steps": 1},
        evaluate={"max_new_tokens": 6, "batch_size": 4, "benchmarks": {"gsm8k": {"limit": 3, "prompt": "final_answer"}}},
    )


def pipeline(root: Path, model_dir: Path, seed: int, stages=("prepare", "train", "evaluate_base", "evaluate")) -> Path:
    work = make_workdir(root)
    write_params(work, overrides(model_dir, seed))
    (work / "logs").mkdir()
    for stage in stages:
        proc = run_stage(work, stage, env=ENV)
        (work / "logs" / f"{stage}.log").write_text(proc.stdout + proc.stderr)
        assert proc.returncode == 0, f"{stage}: {proc.stderr[-2000:]}"
    return work


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    return {
        "a": pipeline(tmp_path_factory.mktemp("seed-a"), tiny_model_dir, SEED),
        "b": pipeline(tmp_path_factory.mktemp("seed-b"), tiny_model_dir, SEED),
        "other": pipeline(tmp_path_factory.mktemp("other-seed"), tiny_model_dir, OTHER_SEED,
                          stages=("prepare", "train")),
    }


def read(work: Path, path: str) -> str:
    return (work / path).read_text()


def train_losses(work: Path) -> dict:
    m = json.loads(read(work, "metrics/train.json"))
    return {k: m[k] for k in ("final_train_loss", "best_eval_loss", "train_tokens")}


@pytest.mark.slow
def test_same_seed_same_everything(runs):
    a, b = runs["a"], runs["b"]
    for split in ("train", "val", "test"):
        assert read(a, f"data/prepared/{split}.jsonl") == read(b, f"data/prepared/{split}.jsonl"), split
    assert (a / "models/adapter/adapter_model.safetensors").read_bytes() == \
        (b / "models/adapter/adapter_model.safetensors").read_bytes()
    assert train_losses(a) == train_losses(b)
    assert read(a, "metrics.json") == read(b, "metrics.json")
    assert json.loads(read(a, "metrics.json"))["gsm8k"]["adapter"]["n"] == 3
    assert read(a, "predictions/gsm8k.jsonl") == read(b, "predictions/gsm8k.jsonl")


@pytest.mark.slow
def test_other_seed_changes_split_and_result(runs):
    a, other = runs["a"], runs["other"]
    assert read(a, "data/prepared/train.jsonl") != read(other, "data/prepared/train.jsonl")
    assert train_losses(a) != train_losses(other)
    assert (a / "models/adapter/adapter_model.safetensors").read_bytes() != \
        (other / "models/adapter/adapter_model.safetensors").read_bytes()
    # the benchmark is the same whatever the seed: only training data moves
    assert read(a, "data/prepared/test.jsonl") == read(other, "data/prepared/test.jsonl")


@pytest.mark.slow
def test_no_secret_written_by_a_full_pipeline(runs):
    """HF_TOKEN was set for every stage: no params, log, dvclive, metrics, prediction, adapter or
    checkpoint file contains it."""
    for work in runs.values():
        files = [p for p in work.rglob("*") if p.is_file()]
        assert any(p.name == "adapter_model.safetensors" for p in files)
        leaked = [str(p.relative_to(work)) for p in files if SECRET.encode() in p.read_bytes()]
        assert not leaked, f"{SECRET} written to {leaked}"
