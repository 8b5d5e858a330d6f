"""The `check` stage: every param and input validated before any other stage runs.

DVC removes a stage's outputs just before it runs the stage's command, so a bad param that only the
train stage noticed had already cost models/adapter, metrics/train.json and dvclive/train (and a
bad data path, data/prepared/*). `check` is the first stage of the DAG and depends on every param
and on the input data, so `dvc repro` / `dvc exp run` stop here, before anything is removed.

Its output (PASSED) has the same bytes whatever the params: a passing check never makes DVC rerun
a later stage; only the params and deps each stage itself lists do.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from tinyreason import paths
from tinyreason.config import RunConfig, load_config
from tinyreason.errors import ConfigError, DataError, TinyReasonError

# Where a local train.grpo.train_path must live: the train stage's DVC dependency in dvc.yaml. DVC
# deps cannot depend on params, so the stage declares this directory and the check refuses a file
# elsewhere (DVC would not rerun training when it changed).
GRPO_DATA_DIR = Path("data/raw")
CHECKED = ["params.yaml: keys, types, ranges, the active profile and cross-references",
           "model.name_or_path / model.gguf_file: a pip package, a directory or a hub id",
           "prepare.train_path, train.grpo.train_path: an existing file or a hub id",
           "evaluate.benchmarks: known names, existing files",
           "model.load_in_4bit, train.optim: supported on this machine",
           "train.report_to: every tracker installed",
           "train.grpo.train_path: a local file under data/raw/ (a train stage dependency)",
           "train.grpo.rollout: vllm installed when asked for",
           "train.sft.trl_args, train.grpo.trl_args: fields of TRL's SFTConfig / GRPOConfig the pipeline does not set"]


def check_inputs(cfg: RunConfig) -> None:
    """Everything a stage would refuse later, refused now (same checks, one-line errors)."""
    from tinyreason import benchmarks, data, modeling, tracking, training

    modeling.check_model_location(cfg.model)
    data.local_data_file(cfg.prepare.train_path, data.PREPARE_PATH_FIX)
    local = data.grpo_local_file(cfg)
    if local is not None and not local.resolve().is_relative_to(GRPO_DATA_DIR.resolve()):
        raise DataError(f"params.yaml: train.grpo.train_path: {cfg.train.grpo.train_path} is outside "
                        f"{GRPO_DATA_DIR}/, the directory dvc.yaml tracks for the train stage, so DVC would not "
                        f"retrain when it changes (fix: move it under {GRPO_DATA_DIR}/ and point "
                        "train.grpo.train_path there)")
    vllm_wanted = cfg.train.method == "grpo" and cfg.train.grpo.rollout == "vllm"
    if vllm_wanted and importlib.util.find_spec("vllm") is None:
        raise ConfigError("params.yaml: train.grpo.rollout: vllm is not installed (fix: pip install vllm, "
                          "or set train.grpo.rollout=auto)")
    for name, run in cfg.evaluate.benchmarks.items():
        try:
            benchmarks.benchmark_source(name, run.path, cfg.evaluate.spec_of(name, cfg.prompt(run.prompt).answer_format))
        except DataError as exc:
            raise DataError(f"params.yaml: evaluate.benchmarks.{name}.path: {exc}") from None
    training.check_device_support(cfg, paths.CHECKPOINTS)
    training.check_trl_args("sft", cfg.train.sft.trl_args)
    training.check_trl_args("grpo", cfg.train.grpo.trl_args)
    tracking.check_trackers_installed(cfg.train.report_to)


def check_run(params: str | Path = paths.PARAMS) -> RunConfig:
    try:
        cfg = load_config(params)
        check_inputs(cfg)
    except TinyReasonError as exc:
        hint = uncommitted_value_hint(params, str(exc))
        if not hint:
            raise
        raise type(exc)(f"{exc} {hint}") from None
    return cfg


def uncommitted_value_hint(params: str | Path, message: str) -> str:
    """When the refused key holds a value the committed params file does not: `dvc exp run -S` writes its
    values into params.yaml before the check runs and a failed run leaves them there, so every later run
    fails on that old mistake until it is set right or undone. Empty when the key is as committed."""
    from tinyreason.config import committed_params_mapping, load_params_mapping
    from tinyreason.recipes import flatten_params

    committed = committed_params_mapping(params)
    try:
        now = dict(flatten_params(load_params_mapping(params)))
    except TinyReasonError:
        return ""
    if committed is None:
        return ""
    before = dict(flatten_params(committed))
    for key, value in now.items():
        if key in before and before[key] == value:
            continue
        parts = key.split(".")
        # the key itself, or a parent the message names (evaluate.benchmarks.gsm8kk for its .limit)
        named = [".".join(parts[:n]) for n in range(len(parts), 1, -1)
                 if re.search(rf"(?<![\w.]){re.escape('.'.join(parts[:n]))}(?!\w)", message)]
        if named:
            shown = f"{key}={value!r}" if named[0] == key else named[0]
            return (f"[{shown} is not the committed value: `dvc exp run -S` writes into {params} and a failed run "
                    f"leaves it there, so later runs fail on it too (fix: set a valid value with -S {named[0]}=..., "
                    f"or undo every -S: git checkout {params})]")
    return ""
