"""DVCLive logging for TRL/transformers trainers, at the trainer's own step; the other trackers.

transformers' DVCLiveCallback advances DVCLive's step on every log call (train logs and eval
logs alike), so eval points land at the wrong x. This callback pins each point to
`state.global_step`, so `dvc plots show` draws train loss, eval loss and lr on one axis.
The other trackers of train.report_to (wandb, mlflow, ...) are transformers' own integrations.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

from transformers import TrainerCallback

from tinyreason.errors import ConfigError

# Trainer's end-of-run summary keys (train_runtime, ...) are totals, not curves.
_SUMMARY_PREFIX = "train_"


class LiveMetricsCallback(TrainerCallback):
    def __init__(self, live):
        self.live = live

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        self.live.step = state.global_step
        for key, value in logs.items():
            if key.startswith(_SUMMARY_PREFIX) or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            name = "eval/" + key[len("eval_"):] if key.startswith("eval_") else f"train/{key}"
            self.live.log_metric(name, value)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.live.make_summary()


def trainer_reporting(report_to: list[str]) -> dict:
    """TrainingArguments for train.report_to: dvclive is our callback, not transformers' (whose eval
    points land at the wrong step), so it is left out; the run is named after the DVC experiment
    (`dvc exp run` sets DVC_EXP_NAME) so wandb/mlflow runs match `dvc exp show`."""
    others = [name for name in report_to if name != "dvclive"]
    args = {"report_to": others or "none"}
    if os.environ.get("DVC_EXP_NAME"):
        args["run_name"] = os.environ["DVC_EXP_NAME"]
    return args


def check_trackers_installed(report_to: list[str]) -> None:
    """Each tracker named is one transformers can use here (its own availability test)."""
    from transformers.integrations import get_available_reporting_integrations

    available = get_available_reporting_integrations()
    for name in report_to:
        if name not in available:
            raise ConfigError(f"params.yaml: train.report_to: {name} is not installed (fix: pip install {name}, "
                              "or remove it from train.report_to)")


def replay_history(live, checkpoint: str | None) -> None:
    """Log the curves up to `checkpoint` again: a resumed run's DVCLive directory starts empty."""
    if not checkpoint:
        return
    callback = LiveMetricsCallback(live)
    for entry in json.loads((Path(checkpoint) / "trainer_state.json").read_text())["log_history"]:
        logs = {k: v for k, v in entry.items() if k != "step"}
        callback.on_log(None, SimpleNamespace(is_world_process_zero=True, global_step=entry["step"]), None, logs=logs)


# Every training curve dvc.yaml's top-level plots read, as DVCLive metric names (files
# dvclive/train/plots/metrics/<name>.tsv); tests/test_plots.py checks the two lists agree.
# Top-level plots cannot depend on train.method, and `dvc plots show/diff` reports "DVC failed to
# load some plots" for any file missing: an SFT run logs no GRPO reward, a GRPO run no eval loss
# and only the rewards it uses.
PLOTTED_CURVES = (
    "train/loss", "eval/loss", "train/learning_rate",
    "train/reward", "train/rewards/format/mean", "train/rewards/accuracy/mean", "train/rewards/cosine/mean",
    "train/completions/mean_length", "train/completions/clipped_ratio", "train/kl",
    "eval/heldout/accuracy", "eval/heldout/format_rate", "eval/heldout/mean_length",
)


def write_empty_curves(live_dir) -> list[str]:
    """Give each plotted curve this run did not log a header-only TSV (DVCLive's columns, no rows):
    DVC draws it as an empty plot instead of failing to load it. Returns the names written."""
    written = []
    for name in PLOTTED_CURVES:
        path = Path(live_dir) / "plots" / "metrics" / f"{name}.tsv"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"timestamp\tstep\t{name.rsplit('/', 1)[-1]}\n")
            written.append(name)
    return written
