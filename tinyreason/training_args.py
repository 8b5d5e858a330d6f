"""The TrainingArguments both training methods share (SFTConfig and GRPOConfig build on them).

Seed, lr schedule, optimizer, checkpointing, logging, trackers and device come from the same params
for SFT (sft.py) and GRPO (grpo.py), so they are written once here; each method adds its own.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tinyreason import tracking
from tinyreason.config import RunConfig
from tinyreason.errors import TinyReasonError

BITSANDBYTES_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit")


def common_training_arguments(cfg: RunConfig, output_dir: Path, optim: str | None = None) -> dict:
    """The TrainingArguments the SFT and GRPO recipes share: seed, schedule, optimizer, saving,
    logging, trackers and device. DVCLive is attached explicitly (with the stage's own directory);
    report_to holds the other trackers of train.report_to (tracking.trainer_reporting)."""
    t = cfg.train
    optim = optim or t.optim
    on_cuda = torch.cuda.is_available()
    if optim in BITSANDBYTES_OPTIMIZERS and not on_cuda:
        raise TinyReasonError(f"train.optim: {optim} (bitsandbytes) needs a CUDA GPU (fix: set "
                              "train.optim=adamw_torch, or run the CPU profile: dvc exp run -S profile=cpu)")
    return dict(output_dir=str(output_dir), seed=cfg.seed, data_seed=cfg.seed, max_steps=t.max_steps,
                learning_rate=t.learning_rate, lr_scheduler_type=t.lr_scheduler_type, warmup_steps=t.warmup_steps,
                optim=optim, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
                save_strategy="steps", save_steps=t.save_steps, save_total_limit=t.save_total_limit,
                logging_steps=t.logging_steps, use_cpu=not on_cuda, dataloader_num_workers=0,
                **tracking.trainer_reporting(t.report_to))


# ---------------------------------------------------------------------------------------------
# train.sft.trl_args / train.grpo.trl_args: any other SFTConfig / GRPOConfig field, merged last

# Fields the pipeline sets itself -> where to set them instead. A trl_args entry for one of them
# would fight its param (or the stage's checkpoint/resume/tracking logic), so it is refused.
TRL_OWNED = {  # both methods
    "output_dir": "the train stage (checkpoints/<fingerprint>/)",
    "resume_from_checkpoint": "the train stage (it resumes from its last checkpoint)",
    "seed": "seed", "data_seed": "seed", "use_cpu": "the train stage (CPU when no GPU)",
    "max_steps": "train.max_steps", "learning_rate": "train.learning_rate",
    "lr_scheduler_type": "train.lr_scheduler_type", "lr_scheduler_kwargs": "train.grpo.min_lr_rate",
    "warmup_steps": "train.warmup_steps", "optim": "train.optim", "weight_decay": "train.weight_decay",
    "max_grad_norm": "train.max_grad_norm", "logging_steps": "train.logging_steps",
    "save_strategy": "train.save_steps", "save_steps": "train.save_steps", "save_total_limit": "train.save_total_limit",
    "eval_strategy": "train.eval_steps", "eval_steps": "train.eval_steps",
    "load_best_model_at_end": "the train stage (SFT keeps the best checkpoint by eval loss)",
    "metric_for_best_model": "the train stage (SFT keeps the best checkpoint by eval loss)",
    "greater_is_better": "the train stage (SFT keeps the best checkpoint by eval loss)",
    "per_device_train_batch_size": "train.per_device_train_batch_size",
    "per_device_eval_batch_size": "train.per_device_eval_batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps",
    "gradient_checkpointing": "train.gradient_checkpointing", "bf16": "model.dtype", "fp16": "model.dtype",
    "report_to": "train.report_to", "run_name": "the train stage (the DVC experiment's name)",
}
SFT_OWNED = {"max_length": "train.max_length", "packing": "train.packing",
             "completion_only_loss": "train.completion_only_loss"}
GRPO_OWNED = {
    "num_generations": "train.grpo.num_generations", "max_completion_length": "train.grpo.max_completion_length",
    "temperature": "train.grpo.temperature", "top_p": "train.grpo.top_p", "beta": "train.grpo.beta",
    "epsilon": "train.grpo.epsilon", "loss_type": "train.grpo.loss_type", "scale_rewards": "train.grpo.scale_rewards",
    "mask_truncated_completions": "train.grpo.mask_truncated_completions",
    "reward_weights": "train.grpo.reward_weights", "log_completions": "train.grpo.log_completions",
    "use_vllm": "train.grpo.rollout", "vllm_mode": "train.grpo.vllm_mode",
    "vllm_gpu_memory_utilization": "train.grpo.vllm_gpu_memory_utilization",
}


def trl_config_class(method: str):
    """TRL's config class for a training method: SFTConfig or GRPOConfig."""
    from trl import GRPOConfig, SFTConfig

    return GRPOConfig if method == "grpo" else SFTConfig


def check_trl_args(method: str, trl_args: dict) -> None:
    """Every key a field of TRL's config class and none the pipeline sets; the values TRL accepts."""
    import dataclasses
    import difflib

    from tinyreason.errors import ConfigError

    config_class, section = trl_config_class(method), f"train.{method}.trl_args"
    fields = [f.name for f in dataclasses.fields(config_class) if f.init]
    for key in trl_args:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"did you mean {close[0]}?" if close else f"see the fields of trl.{config_class.__name__}"
            raise ConfigError(f"params.yaml: {section}.{key}: not a {config_class.__name__} field ({hint})")
        owned = {**TRL_OWNED, **(GRPO_OWNED if method == "grpo" else SFT_OWNED)}
        if key in owned:
            owner = owned[key]
            fix = f"remove it; {owner} sets it" if " " in owner else f"set {owner} instead"
            raise ConfigError(f"params.yaml: {section}.{key}: set by the pipeline (fix: {fix})")


def build_trl_config(method: str, arguments: dict, trl_args: dict):
    """SFTConfig / GRPOConfig from the pipeline's arguments with train.<method>.trl_args merged last;
    a value TRL refuses is a one-line error naming the section."""
    from tinyreason.errors import ConfigError

    check_trl_args(method, trl_args)
    config_class = trl_config_class(method)
    try:
        return config_class(**{**arguments, **trl_args})
    except ValueError as exc:
        if not trl_args:
            raise
        raise ConfigError(f"params.yaml: train.{method}.trl_args: {config_class.__name__} refuses these settings: "
                          f"{' '.join(str(exc).split())}") from None
