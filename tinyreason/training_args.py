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
