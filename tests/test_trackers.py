"""train.report_to: dvclive (our callback) by default; wandb, mlflow, tensorboard, trackio passed to the
trainer as transformers' report_to. Validation, the mapping, and the TrainingArguments both methods get."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import shipped_params, shipped_params_path
from tinyreason import checkpoints, sft, tracking
from tinyreason.config import TRACKERS, config_from_dict, load_config
from tinyreason.errors import ConfigError

CPU_TRAIN = {"optim": "adamw_torch"}  # the shipped adamw_8bit needs CUDA


def test_default_is_dvclive_alone():
    assert config_from_dict({}, "test").train.report_to == ["dvclive"]
    assert load_config(shipped_params_path()).train.report_to == ["dvclive"]


def test_every_tracker_is_a_transformers_integration():
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    assert set(TRACKERS) <= set(INTEGRATION_TO_CALLBACK)


@pytest.mark.parametrize("report_to, key, fragment", [
    (["dvclive", "wandbb"], "train.report_to[1]", "unknown tracker 'wandbb' (fix: did you mean wandb?)"),
    (["dvclive", "comet"], "train.report_to[1]", "use one of dvclive, wandb, mlflow, tensorboard, trackio"),
    (["dvclive", "dvclive"], "train.report_to[1]", "listed twice"),
    (["wandb"], "train.report_to", "leaves out dvclive"),
    ([], "train.report_to", "(fix: report_to: [dvclive])"),
    ("wandb", "train.report_to", "expected a list"),
])
def test_bad_report_to_is_one_line_naming_the_key(report_to, key, fragment):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"train": {"report_to": report_to}})
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"params.yaml: {key}:"), message
    assert fragment in message and "fix:" in message


def test_dvclive_stays_our_callback_the_rest_go_to_the_trainer(monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert tracking.trainer_reporting(["dvclive"]) == {"report_to": "none"}
    assert tracking.trainer_reporting(["dvclive", "tensorboard"]) == {"report_to": ["tensorboard"]}
    assert tracking.trainer_reporting(["wandb", "dvclive", "mlflow"]) == {"report_to": ["wandb", "mlflow"]}
    monkeypatch.setenv("DVC_EXP_NAME", "leafy-bass")  # what `dvc exp run` sets
    assert tracking.trainer_reporting(["dvclive", "wandb"]) == {"report_to": ["wandb"], "run_name": "leafy-bass"}


@pytest.mark.parametrize("method", ["sft", "grpo"])
def test_both_methods_trainer_arguments_get_report_to(method, tmp_path, monkeypatch):
    from tinyreason import grpo

    def build(report_to):
        raw = shipped_params()  # GRPO's default prompt (boxed) is defined there
        raw["train"].update(CPU_TRAIN, method=method, report_to=report_to)
        cfg = config_from_dict(raw)
        return (sft.build_sft_config if method == "sft" else grpo.build_grpo_config)(cfg, tmp_path)

    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    args = build(["dvclive"])
    assert args.report_to in ("none", [], ["none"]) and args.run_name is None  # transformers: "none" -> []
    monkeypatch.setenv("DVC_EXP_NAME", "leafy-bass")
    args = build(["dvclive", "tensorboard", "wandb"])  # names only: nothing is loaded until a Trainer starts
    assert args.report_to == ["tensorboard", "wandb"] and args.run_name == "leafy-bass"


def test_report_to_does_not_change_the_checkpoint_directory(tmp_path):
    def fingerprint(**train):
        return checkpoints.checkpoint_dir_for(tmp_path, config_from_dict({"train": train}, "test"))

    assert fingerprint() == fingerprint(report_to=["dvclive", "wandb"])
    assert fingerprint() != fingerprint(max_steps=251)


def test_a_tracker_that_is_not_installed_is_named_with_the_fix(monkeypatch):
    import transformers.integrations

    monkeypatch.setattr(transformers.integrations, "get_available_reporting_integrations", lambda: ["dvclive"])
    tracking.check_trackers_installed(["dvclive"])
    with pytest.raises(ConfigError, match=r"^params.yaml: train.report_to: wandb is not installed \(fix: pip "
                                          r"install wandb, or remove it from train.report_to\)$"):
        tracking.check_trackers_installed(["dvclive", "wandb"])


def test_tensorboard_gets_the_curves_dvclive_keeps_its_own(tiny_model_dir, smollm_tokenizer, tmp_path, monkeypatch):
    """Two steps with report_to [dvclive, tensorboard]: an events file, and the DVCLive curves at the
    trainer's steps as before. Runs only where tensorboard is installed."""
    pytest.importorskip("tensorboard")
    from dvclive import Live

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    rows = [{"prompt": smollm_tokenizer.apply_chat_template([{"role": "user", "content": f"{a}+{a}?"}],
                                                            tokenize=False, add_generation_prompt=True),
             "completion": f"{2 * a}<|im_end|>"} for a in range(8)]
    train_file, val_file = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    val_file.write_text("".join(json.dumps(r) + "\n" for r in rows[6:]))
    cfg = config_from_dict({
        "model": {"name_or_path": str(tiny_model_dir), "load_in_4bit": False, "dtype": "float32"},
        "train": {**CPU_TRAIN, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
                  "per_device_eval_batch_size": 2, "max_steps": 2, "warmup_steps": 0, "eval_steps": 2,
                  "save_steps": 2, "logging_steps": 1, "max_length": 128, "gradient_checkpointing": False,
                  "report_to": ["dvclive", "tensorboard"]},
    }, "test")
    live = Live(str(tmp_path / "dvclive"), dvcyaml=None, save_dvc_exp=False, report=None)
    sft.train_sft(cfg, train_file, val_file, tmp_path / "ckpt", live=live)
    assert list((tmp_path / "ckpt" / "runs").rglob("events.out.tfevents.*"))
    curves = tmp_path / "dvclive" / "plots" / "metrics"

    def steps(name):
        with open(curves / f"{name}.tsv", newline="") as f:
            return [row["step"] for row in csv.DictReader(f, delimiter="\t")]

    assert steps("train/loss") == ["1", "2"] and steps("eval/loss") == ["2"]
