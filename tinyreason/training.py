"""What SFT (sft.py) and GRPO (grpo.py) share: the TrainingArguments both build on, the precision flags,
the device check, the result type and the training-metrics keys both report.

Seed, lr schedule, optimizer, checkpointing, logging, trackers and device come from the same params
for both methods, so they are written once here; each method adds its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tinyreason import tracking
from tinyreason.checkpoints import step_of
from tinyreason.config import RunConfig
from tinyreason.errors import TinyReasonError

BITSANDBYTES_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit")


@dataclass
class TrainResult:
    trainer: object  # the TRL trainer, its best (SFT) or last (GRPO) weights loaded: the stage saves them
    metrics: dict    # metrics/train.json


def cuda_available() -> bool:
    import torch  # here, not at the top: the check stage imports this module and needs no torch otherwise

    return torch.cuda.is_available()


def common_training_arguments(cfg: RunConfig, output_dir: Path, optim: str | None = None) -> dict:
    """The TrainingArguments the SFT and GRPO recipes share: seed, schedule, optimizer, saving,
    logging, trackers and device. DVCLive is attached explicitly (with the stage's own directory);
    report_to holds the other trackers of train.report_to (tracking.trainer_reporting)."""
    t = cfg.train
    optim = optim or t.optim
    on_cuda = cuda_available()
    if optim in BITSANDBYTES_OPTIMIZERS and not on_cuda:
        raise TinyReasonError(f"train.optim: {optim} (bitsandbytes) needs a CUDA GPU (fix: set "
                              "train.optim=adamw_torch, or run the CPU profile: dvc exp run -S profile=cpu)")
    return dict(output_dir=str(output_dir), seed=cfg.seed, data_seed=cfg.seed, max_steps=t.max_steps,
                learning_rate=t.learning_rate, lr_scheduler_type=t.lr_scheduler_type, warmup_steps=t.warmup_steps,
                optim=optim, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
                save_strategy="steps", save_steps=t.save_steps, save_total_limit=t.save_total_limit,
                logging_steps=t.logging_steps, use_cpu=not on_cuda, dataloader_num_workers=0,
                **tracking.trainer_reporting(t.report_to))


def precision_flags(cfg: RunConfig, autocast: bool = True) -> dict:
    """TrainingArguments' bf16/fp16 (mixed precision): on CUDA, in the model's compute dtype. `autocast=False`
    when the trainable weights are already bf16 (SFT's fast plan), so no autocast is needed."""
    import torch

    from tinyreason.modeling import compute_dtype

    dtype = compute_dtype(cfg.model)
    amp = autocast and torch.cuda.is_available()
    return {"bf16": amp and dtype == torch.bfloat16, "fp16": amp and dtype == torch.float16}


def check_device_support(cfg: RunConfig, checkpoints: Path) -> None:
    """4-bit weights and 8-bit optimizers need CUDA: say so before anything is written."""
    from tinyreason import modeling

    if not (cfg.model.load_in_4bit or cfg.train.optim in BITSANDBYTES_OPTIMIZERS) or cuda_available():
        return  # (nothing asked needs CUDA: torch is not even imported)
    modeling.quantization_config(cfg.model)  # one-line error when model.load_in_4bit asks for NF4
    common_training_arguments(cfg, checkpoints)  # one-line error for a bitsandbytes optimizer


def training_metrics(trainer, output, resume: str | None) -> dict:
    """The metrics/train.json keys both methods report, from a finished trainer and train()'s output."""
    state = trainer.state
    trainable, total = trainer.model.get_nb_trainable_parameters()
    runtime = output.metrics.get("train_runtime", 0.0)
    tokens = state.num_input_tokens_seen
    return {
        "steps": state.global_step,
        "train_runtime_seconds": round(runtime, 2),
        "train_tokens": int(tokens),
        "train_tokens_per_second": round(tokens / runtime, 1) if runtime else None,
        "trainable_parameters": int(trainable),
        "total_parameters": int(total),
        "resumed_from_step": step_of(resume),
    }
