"""Bad inputs: each one makes a stage fail with a non-zero exit, one `error:` line on stderr
that names the file or key and says how to fix it, no traceback, and no output written or changed.

Most cases run the stage's main() in this process through errors.run_stage (the same wrapper the
stage scripts exit through) to avoid a 10 s interpreter start each; two run as real subprocesses.
"""

from __future__ import annotations

import errno
import json
import os
import runpy
import shutil
from pathlib import Path

import pytest

from conftest import make_workdir, run_stage, save_fresh_adapter, tiny_run_overrides, write_params

# Every path a stage may write (DVC outputs and their temporaries, checkpoints).
WRITABLE = ("data/prepared", "metrics", "metrics.json", "models", "dvclive", "predictions", "base_eval", "checkpoints")


def base_overrides(model_dir: Path, **sections) -> dict:
    defaults = dict(prepare={"num_samples": 12, "val_fraction": 0.25},
                    train={"max_steps": 2, "max_length": 256, "eval_steps": 2, "save_steps": 2},
                    evaluate={"max_new_tokens": 4, "batch_size": 4,
                              "benchmarks": {"gsm8k": {"limit": 2, "prompt": "final_answer"}}})
    for key, value in sections.items():
        defaults[key] = {**defaults.get(key, {}), **value} if isinstance(value, dict) else value
    return tiny_run_overrides(model_dir, **defaults)


def snapshot(work: Path) -> dict:
    """Every file a stage could have written, with its bytes."""
    found = {}
    for top in WRITABLE:
        root = work / top
        paths = [root] if root.is_file() else (root.rglob("*") if root.exists() else [])
        for p in paths:
            found[str(p.relative_to(work))] = p.read_bytes() if p.is_file() else None
        for sibling in work.glob(f"{Path(top).parent}/.{Path(top).name}.*"):  # temporaries
            found[str(sibling.relative_to(work))] = "temporary"
    return found


def call_stage(work: Path, stage: str, monkeypatch, capsys) -> tuple[int, str]:
    """The stage's main() under errors.run_stage, in `work`; returns (exit code, stderr)."""
    from tinyreason.errors import run_stage as wrap

    monkeypatch.chdir(work)
    main = runpy.run_path(str(work / "stages" / f"{stage}.py"))["main"]
    capsys.readouterr()
    code = wrap(main)
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str, *needles: str) -> str:
    assert code != 0
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    line = lines[0]
    # the fix: spelled out, or as the expected value / the closest known key
    assert any(w in line for w in ("(fix:", "did you mean", "expected", "not one of")), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def expect_failure(work, stage, monkeypatch, capsys, *needles) -> str:
    before = snapshot(work)
    code, err = call_stage(work, stage, monkeypatch, capsys)
    line = assert_one_line(code, err, *needles)
    assert snapshot(work) == before, "a failing stage wrote or changed outputs"
    return line


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_model_dir):
    """A work dir with prepared data (prepare run once), copied per test."""
    work = make_workdir(tmp_path_factory.mktemp("prepared"))
    write_params(work, base_overrides(tiny_model_dir))
    cwd = os.getcwd()
    os.chdir(work)
    try:
        runpy.run_path(str(work / "stages" / "prepare.py"))["main"]()
    finally:
        os.chdir(cwd)
    assert (work / "data" / "prepared" / "test.jsonl").is_file()
    return work


@pytest.fixture
def work(tmp_path, prepared):
    copy = tmp_path / "work"
    shutil.copytree(prepared, copy)
    return copy


def set_params(work: Path, model_dir: Path, **sections) -> None:
    write_params(work, base_overrides(model_dir, **sections))


# ---------------------------------------------------------------------------------------------
# params


def test_unknown_param_real_subprocess(work, tiny_model_dir):
    """Exit code 2 and exactly one stderr line from the real stage script."""
    set_params(work, tiny_model_dir, train={"max_step": 3})
    before = snapshot(work)
    proc = run_stage(work, "prepare")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert_one_line(proc.returncode, proc.stderr, "params.yaml", "train.max_step", "did you mean 'train.max_steps'")
    assert snapshot(work) == before


@pytest.mark.parametrize("section, needles", [
    ({"train": {"learning_rate": "fast"}}, ("params.yaml", "train.learning_rate", "expected a number")),
    ({"train": {"max_steps": 2.5}}, ("params.yaml", "train.max_steps", "expected an integer")),
    ({"train": {"lora": {"r": 0}}}, ("params.yaml", "train.lora.r", "out of range")),
    ({"prepare": {"val_fraction": 1.5}}, ("params.yaml", "prepare.val_fraction", "out of range")),
    ({"model": {"dtype": "float8"}}, ("params.yaml", "model.dtype", "not one of")),
], ids=["mistyped-float", "mistyped-int", "out-of-range-r", "out-of-range-fraction", "bad-choice"])
def test_bad_param(work, tiny_model_dir, monkeypatch, capsys, section, needles):
    set_params(work, tiny_model_dir, **section)
    line = expect_failure(work, "train", monkeypatch, capsys, *needles)
    assert line.startswith("error: params.yaml: ")


def test_params_not_yaml(work, monkeypatch, capsys):
    (work / "params.yaml").write_text("train: {max_steps: [\n")
    expect_failure(work, "evaluate", monkeypatch, capsys, "params.yaml", "line")


# ---------------------------------------------------------------------------------------------
# data


def test_missing_data_file(work, tiny_model_dir, monkeypatch, capsys):
    set_params(work, tiny_model_dir, prepare={"train_path": "data/raw/nope.jsonl"})
    expect_failure(work, "prepare", monkeypatch, capsys, "data/raw/nope.jsonl", "not found", "prepare.train_path")


GOOD = '{"question": "Tom has %d apples and eats one. How many are left?", "answer": "He has %d - 1 = %d.\\n#### %d"}'


def good_rows(n: int) -> list[str]:
    return [GOOD % (i + 2, i + 2, i + 1, i + 1) for i in range(n)]


MALFORMED = ['{"question": "no answer field"}',               # lacks a field
             'this line is not JSON',                          # not JSON
             '{"question": "Q?", "answer": "no marker 42"}',   # lacks ####
             '["a", "list"]']                                  # not an object


def test_malformed_rows_are_dropped_and_counted(work, tiny_model_dir, monkeypatch, capsys):
    data = work / "data" / "raw" / "mixed.jsonl"
    data.write_text("\n".join(good_rows(12) + MALFORMED) + "\n")
    set_params(work, tiny_model_dir, prepare={"train_path": "data/raw/mixed.jsonl"})
    code, err = call_stage(work, "prepare", monkeypatch, capsys)
    assert code == 0, err
    report = json.loads((work / "metrics" / "prepare.json").read_text())
    assert report["source_rows_dropped"] == len(MALFORMED)
    assert report["source_rows_kept"] == 12
    questions = {json.loads(line)["question"] for split in ("train", "val")
                 for line in (work / "data" / "prepared" / f"{split}.jsonl").read_text().splitlines()}
    assert len(questions) == 12 and all(q.startswith("Tom has") for q in questions)


@pytest.mark.parametrize("lines", [MALFORMED, []], ids=["all-rows-bad", "empty-file"])
def test_no_usable_rows(work, tiny_model_dir, monkeypatch, capsys, lines):
    (work / "data" / "raw" / "bad.jsonl").write_text("".join(line + "\n" for line in lines))
    set_params(work, tiny_model_dir, prepare={"train_path": "data/raw/bad.jsonl"})
    expect_failure(work, "prepare", monkeypatch, capsys, "data/raw/bad.jsonl", "no usable rows", "####")


def test_too_few_rows_after_filtering(work, tiny_model_dir, monkeypatch, capsys):
    (work / "data" / "raw" / "one.jsonl").write_text("\n".join(good_rows(1) + MALFORMED) + "\n")
    set_params(work, tiny_model_dir, prepare={"train_path": "data/raw/one.jsonl"})
    expect_failure(work, "prepare", monkeypatch, capsys, "data/raw/one.jsonl: only 1 usable example",
                   "add well-formed rows")


def test_unknown_benchmark(work, tiny_model_dir, monkeypatch, capsys):
    set_params(work, tiny_model_dir, evaluate={"benchmarks": {"gsm8kk": {"limit": 2, "prompt": "final_answer"}}})
    expect_failure(work, "prepare", monkeypatch, capsys, "params.yaml", "evaluate.benchmarks.gsm8kk",
                   "did you mean 'gsm8k'")


def test_train_without_prepared_data(work, monkeypatch, capsys):
    shutil.rmtree(work / "data" / "prepared")
    expect_failure(work, "train", monkeypatch, capsys, "data/prepared/train.jsonl", "prepare")


def test_prompt_longer_than_train_max_length(work, tiny_model_dir, monkeypatch, capsys):
    set_params(work, tiny_model_dir, train={"max_length": 32})
    expect_failure(work, "train", monkeypatch, capsys, "data/prepared/train.jsonl:1", "train.max_length=32",
                   "set train.max_length above")


# ---------------------------------------------------------------------------------------------
# devices, adapters, context


def test_4bit_without_cuda_real_subprocess(work, tiny_model_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    set_params(work, tiny_model_dir, model={"load_in_4bit": True})
    before = snapshot(work)
    proc = run_stage(work, "train")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert_one_line(proc.returncode, proc.stderr, "model.load_in_4bit", "CUDA", "load_in_4bit=false")
    assert snapshot(work) == before


def test_8bit_optimizer_without_cuda(work, tiny_model_dir, monkeypatch, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    set_params(work, tiny_model_dir, train={"optim": "adamw_8bit"})
    expect_failure(work, "train", monkeypatch, capsys, "train.optim", "adamw_torch")


def fake_adapter(work: Path, base: str) -> Path:
    from safetensors.torch import save_file
    import torch

    adapter = work / "models" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "peft_type": "LORA"}))
    save_file({"w": torch.zeros(1)}, adapter / "adapter_model.safetensors")
    (adapter / "params.json").write_text(json.dumps({"model": {"name_or_path": base}}))
    return adapter


def test_evaluate_adapter_missing(work, monkeypatch, capsys):
    expect_failure(work, "evaluate", monkeypatch, capsys, "models/adapter", "adapter_config.json missing",
                   "dvc repro train", "evaluate.adapter: none")  # the option the hint offers exists:


def test_evaluate_adapter_none_scores_the_base_model_alone(work, tiny_model_dir, monkeypatch, capsys):
    """The missing-adapter hint's way out: evaluate.adapter: none needs no models/adapter and writes
    base-only metrics (no adapter, no paired comparison); the comparison table still prints."""
    set_params(work, tiny_model_dir, evaluate={"adapter": "none"})
    assert not (work / "models" / "adapter").exists()
    for stage in ("evaluate_base", "evaluate"):
        code, err = call_stage(work, stage, monkeypatch, capsys)
        assert code == 0, (stage, err)
    metrics = json.loads((work / "metrics.json").read_text())
    assert set(metrics) == {"gsm8k"}
    assert set(metrics["gsm8k"]) == {"base"} and metrics["gsm8k"]["base"]["n"] == 2
    predictions = [json.loads(line) for line in (work / "predictions" / "gsm8k.jsonl").read_text().splitlines()]
    assert {p["model"] for p in predictions} == {"base"}


def test_evaluate_base_false_scores_the_adapter_alone(work, tiny_model_dir, monkeypatch, capsys):
    """evaluate.evaluate_base: false keeps its meaning with the base model in its own stage: evaluate_base
    generates nothing (an empty base_eval/) and metrics.json has the adapter alone, no paired test."""
    set_params(work, tiny_model_dir, evaluate={"evaluate_base": False})
    save_fresh_adapter(tiny_model_dir, work / "models" / "adapter")
    for stage in ("evaluate_base", "evaluate"):
        code, err = call_stage(work, stage, monkeypatch, capsys)
        assert code == 0, (stage, err)
    assert json.loads((work / "base_eval" / "metrics.json").read_text()) == {}
    assert not (work / "base_eval" / "predictions").exists()
    metrics = json.loads((work / "metrics.json").read_text())
    assert set(metrics["gsm8k"]) == {"adapter"} and metrics["gsm8k"]["adapter"]["n"] == 2
    predictions = [json.loads(line) for line in (work / "predictions" / "gsm8k.jsonl").read_text().splitlines()]
    assert {p["model"] for p in predictions} == {"adapter"}


def test_evaluate_adapter_without_safetensors(work, tiny_model_dir, monkeypatch, capsys):
    adapter = fake_adapter(work, str(tiny_model_dir))
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    expect_failure(work, "evaluate", monkeypatch, capsys, "models/adapter", "adapter_model.safetensors missing")


def test_evaluate_adapter_from_other_base_model(work, monkeypatch, capsys):
    fake_adapter(work, "Qwen/Qwen2.5-1.5B-Instruct")
    expect_failure(work, "evaluate", monkeypatch, capsys, "models/adapter", "trained on 'Qwen/Qwen2.5-1.5B-Instruct'",
                   "model.name_or_path")


def test_evaluate_prompt_plus_new_tokens_past_context(work, tiny_model_dir, monkeypatch, capsys):
    set_params(work, tiny_model_dir, evaluate={"max_new_tokens": 1000})  # tiny model: 1024 positions
    expect_failure(work, "evaluate_base", monkeypatch, capsys, "data/prepared/test.jsonl", "gsm8k",
                   "evaluate.max_new_tokens=1000", "context of 1024", "set evaluate.max_new_tokens <=")


def test_evaluate_without_the_base_models_answers(work, tiny_model_dir, monkeypatch, capsys):
    """Issue 26: the base model is scored by the evaluate_base stage; evaluate run before it says so."""
    set_params(work, tiny_model_dir, evaluate={"adapter": "none"})
    expect_failure(work, "evaluate", monkeypatch, capsys, "base_eval/inputs.json: not found", "evaluate_base")


def test_evaluate_refuses_base_answers_computed_from_other_params(work, tiny_model_dir, monkeypatch, capsys):
    """Base answers from other generation settings (a stage run by hand out of order) are never paired
    with the adapter's: one line names the param that differs. evaluate.adapter is not one of them."""
    set_params(work, tiny_model_dir, evaluate={"adapter": "none"})
    code, err = call_stage(work, "evaluate_base", monkeypatch, capsys)
    assert code == 0, err
    set_params(work, tiny_model_dir, evaluate={"adapter": "none", "max_new_tokens": 3})
    expect_failure(work, "evaluate", monkeypatch, capsys, "base_eval/inputs.json",
                   "evaluate.max_new_tokens = 4, now 3", "evaluate_base")
    save_fresh_adapter(tiny_model_dir, work / "models" / "adapter")
    set_params(work, tiny_model_dir, evaluate={"adapter": "trained"})
    code, err = call_stage(work, "evaluate", monkeypatch, capsys)
    assert code == 0, err
    assert set(json.loads((work / "metrics.json").read_text())["gsm8k"]) == {"base", "adapter", "adapter_vs_base"}


# ---------------------------------------------------------------------------------------------
# disk full


def test_disk_full_while_saving(work, monkeypatch, capsys):
    """ENOSPC on the second file of data/prepared: one line naming it, old outputs untouched."""
    from tinyreason import outputs

    calls = []
    real_fsync = outputs.os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(outputs.os, "fsync", fsync)
    line = expect_failure(work, "prepare", monkeypatch, capsys, "data/prepared/val.jsonl", "no space left",
                          "free disk space")
    assert ".tmp" not in line
    assert len(calls) == 2


# ---------------------------------------------------------------------------------------------
# The check stage (first in the DAG) refuses each bad input before any other stage runs


@pytest.mark.parametrize("sections, needles", [
    ({"train": {"learning_rate": "fast"}}, ("train.learning_rate", "expected a number")),
    ({"profile": "gpu-huge"}, ("profile", "has no section under profiles")),
    ({"prepare": {"train_path": "data/raw/nope.jsonl"}}, ("data/raw/nope.jsonl", "prepare.train_path")),
    ({"train": {"method": "grpo", "grpo": {"train_path": "data/raw/nope.jsonl"}}},
     ("data/raw/nope.jsonl", "train.grpo.train_path")),
    ({"model": {"name_or_path": "./no/such/dir"}}, ("model.name_or_path", "not a directory")),
    ({"model": {"name_or_path": "not a hub id"}}, ("model.name_or_path", "neither a local directory")),
    ({"model": {"name_or_path": "pip:no-such-package-xyz", "gguf_file": "m.gguf"}}, ("model.name_or_path", "pip install")),
    ({"evaluate": {"benchmarks": {"gsm8kk": {"limit": 1, "prompt": "final_answer"}}}},
     ("evaluate.benchmarks.gsm8kk", "did you mean 'gsm8k'")),
    ({"evaluate": {"benchmarks": {"gsm8k": {"limit": 1, "prompt": "final_answer", "path": "data/nope.jsonl"}}}},
     ("evaluate.benchmarks.gsm8k.path", "data/nope.jsonl")),
    ({"model": {"load_in_4bit": True}}, ("model.load_in_4bit", "CUDA")),
    ({"train": {"optim": "adamw_8bit"}}, ("train.optim", "CUDA")),
    ({"train": {"report_to": ["dvclive", "wandbb"]}}, ("train.report_to[1]", "did you mean wandb")),
    ({"train": {"grpo": {"trl_args": {"epsilon_hgh": 0.28}}}},
     ("train.grpo.trl_args.epsilon_hgh", "not a GRPOConfig field", "did you mean epsilon_high")),
    ({"train": {"sft": {"trl_args": {"max_steps": 3}}}}, ("train.sft.trl_args.max_steps", "set train.max_steps instead")),
    ({"train": {"sft": {"trl_args": {"output_dir": "x"}}}}, ("train.sft.trl_args.output_dir", "remove it")),
])
def test_check_stage_refuses_bad_input(work, tiny_model_dir, monkeypatch, capsys, sections, needles):
    import torch

    if any(n == "CUDA" for n in needles) and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: 4-bit and 8-bit optimizers are supported here")
    set_params(work, tiny_model_dir, **sections)
    expect_failure(work, "check", monkeypatch, capsys, *needles)
    assert not (work / "checks").exists()


def test_check_stage_refuses_a_tracker_that_is_not_installed(work, tiny_model_dir, monkeypatch, capsys):
    import transformers.integrations

    # whatever is installed here: transformers' own availability test says only dvclive
    monkeypatch.setattr(transformers.integrations, "get_available_reporting_integrations", lambda: ["dvclive"])
    set_params(work, tiny_model_dir, train={"report_to": ["dvclive", "wandb"]})
    expect_failure(work, "check", monkeypatch, capsys, "train.report_to: wandb is not installed",
                   "pip install wandb, or remove it from train.report_to")
    assert not (work / "checks").exists()


def test_check_stage_refuses_vllm_rollout_when_vllm_is_not_installed(work, tiny_model_dir, monkeypatch, capsys):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    set_params(work, tiny_model_dir, train={"method": "grpo", "grpo": {"rollout": "vllm"}})
    expect_failure(work, "check", monkeypatch, capsys, "params.yaml: train.grpo.rollout: vllm is not installed",
                   "pip install vllm", "train.grpo.rollout=auto")


def test_check_stage_keeps_grpo_training_files_where_dvc_tracks_them(work, tiny_model_dir, monkeypatch, capsys):
    """DVC deps cannot follow train.grpo.train_path, so the train stage tracks data/raw/ (checks.GRPO_DATA_DIR)
    and a local file elsewhere is refused: editing it would not rerun training."""
    row = json.dumps({"problem": "What is 40 + 2?", "answer": "42"}) + "\n"
    (work / "mine.jsonl").write_text(row)
    set_params(work, tiny_model_dir, train={"method": "grpo", "grpo": {"train_path": "mine.jsonl"}})
    expect_failure(work, "check", monkeypatch, capsys, "train.grpo.train_path: mine.jsonl is outside data/raw/",
                   "move it under data/raw/")
    (work / "data" / "raw" / "grpo").mkdir()
    (work / "data" / "raw" / "grpo" / "mine.jsonl").write_text(row)
    set_params(work, tiny_model_dir, train={"method": "grpo", "grpo": {"train_path": "data/raw/grpo/mine.jsonl"}})
    code, err = call_stage(work, "check", monkeypatch, capsys)
    assert code == 0, err


def test_check_stage_passes_good_input_with_params_independent_bytes(work, tiny_model_dir, monkeypatch, capsys):
    outputs = []
    for steps in (2, 4):
        set_params(work, tiny_model_dir, train={"max_steps": steps})
        code, err = call_stage(work, "check", monkeypatch, capsys)
        assert code == 0, err
        outputs.append((work / "checks" / "passed.json").read_bytes())
    assert outputs[0] == outputs[1]  # so a passing check reruns nothing downstream
