"""DVCLive logging for TRL/transformers trainers, at the trainer's own step; the other trackers.

transformers' DVCLiveCallback advances DVCLive's step on every log call (train logs and eval
logs alike), so eval points land at the wrong x. This callback pins each point to
`state.global_step`, so `dvc plots show` draws train loss, eval loss and lr on one axis.
The other trackers of train.report_to (wandb, mlflow, ...) are transformers' own integrations.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from pathlib import Path
from types import SimpleNamespace

from tinyreason.errors import ConfigError
from tinyreason.rewards import REWARDS

# Trainer's end-of-run summary keys (train_runtime, ...) are totals, not curves.
_SUMMARY_PREFIX = "train_"
# TRL SFTTrainer's running token count (num_tokens, eval_num_tokens): kept in the trainer, not in
# checkpoints, so it restarts at 0 when a killed run resumes. Trainer's num_input_tokens_seen, which
# resumes, is the curve of tokens seen.
_SESSION_COUNTERS = ("num_tokens",)


@functools.cache
def _live_metrics_callback_class():
    """The callback class, built on first use: transformers is imported only by the stages that train
    (the check stage imports this module for `check_trackers_installed`)."""
    from transformers import TrainerCallback

    class LiveMetricsCallback(TrainerCallback):
        def __init__(self, live):
            self.live = live

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            self.live.step = state.global_step
            for key, value in logs.items():
                if (key.startswith(_SUMMARY_PREFIX) or key.removeprefix("eval_") in _SESSION_COUNTERS
                        or isinstance(value, bool) or not isinstance(value, (int, float))):
                    continue
                name = "eval/" + key[len("eval_"):] if key.startswith("eval_") else f"train/{key}"
                self.live.log_metric(name, value)

        def on_train_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.live.make_summary()

    return LiveMetricsCallback


def __getattr__(name: str):  # `tracking.LiveMetricsCallback`, built on first use (PEP 562)
    if name == "LiveMetricsCallback":
        return _live_metrics_callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    """Each tracker named is one transformers can use here (its own availability test; dvclive, the
    default, by the same test transformers makes, without importing transformers)."""
    available = {"dvclive"} if importlib.util.find_spec("dvclive") is not None else set()
    if any(name != "dvclive" for name in report_to):
        from transformers.integrations import get_available_reporting_integrations

        available |= set(get_available_reporting_integrations())
    for name in report_to:
        if name not in available:
            raise ConfigError(f"params.yaml: train.report_to: {name} is not installed (fix: pip install {name}, "
                              "or remove it from train.report_to)")


def replay_history(live, checkpoint: str | None) -> None:
    """Log the curves up to `checkpoint` again: a resumed run's DVCLive directory starts empty."""
    if not checkpoint:
        return
    callback = _live_metrics_callback_class()(live)
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
    "train/reward", *(f"train/rewards/{name}/mean" for name in REWARDS),
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
