"""Supervised fine-tuning with TRL's SFTTrainer and a PEFT LoRA adapter (QLoRA on CUDA).

Read top to bottom: load tokenizer and base model -> build SFTConfig from the typed params ->
train (resuming from the last complete checkpoint if one exists) -> the best checkpoint by eval
loss is reloaded -> the caller saves adapter, tokenizer and params.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from tinyreason import modeling
from tinyreason.config import RunConfig
from tinyreason.errors import TinyReasonError

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    trainer: object
    metrics: dict


def read_prompt_completion(path: Path):
    """Prepared JSONL -> a `datasets.Dataset` of prompt/completion pairs."""
    import datasets

    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not rows:
        raise TinyReasonError(f"{path}: no examples (fix: rerun the prepare stage)")
    return datasets.Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])


def build_sft_config(cfg: RunConfig, output_dir: Path):
    from trl import SFTConfig

    t = cfg.train
    dtype = modeling.compute_dtype(cfg.model)
    on_cuda = torch.cuda.is_available()
    if t.optim in ("adamw_8bit", "paged_adamw_8bit") and not on_cuda:
        raise TinyReasonError(f"train.optim: {t.optim} (bitsandbytes) needs a CUDA GPU (fix: set "
                              "train.optim=adamw_torch, or run the CPU profile: dvc exp run -S profile=cpu)")
    return SFTConfig(
        output_dir=str(output_dir),
        seed=cfg.seed,
        data_seed=cfg.seed,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_steps,
        optim=t.optim,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        eval_strategy="steps",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=t.logging_steps,
        max_length=t.max_length,
        packing=t.packing,
        completion_only_loss=t.completion_only_loss,
        gradient_checkpointing=t.gradient_checkpointing,
        bf16=on_cuda and dtype == torch.bfloat16,
        fp16=on_cuda and dtype == torch.float16,
        use_cpu=not on_cuda,
        include_num_input_tokens_seen="non_padding",
        report_to="none",  # DVCLive is attached explicitly, with the stage's own directory
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def last_checkpoint(output_dir: Path) -> str | None:
    """The newest complete checkpoint in output_dir (Trainer writes trainer_state.json last)."""
    from transformers.trainer_utils import get_last_checkpoint

    if not Path(output_dir).is_dir():
        return None
    found = get_last_checkpoint(str(output_dir))
    if found and not (Path(found) / "trainer_state.json").is_file():
        return None
    return found


def train_sft(cfg: RunConfig, train_file: Path, val_file: Path, checkpoint_dir: Path, live=None) -> TrainResult:
    """Run SFT; resumes from the last complete checkpoint in `checkpoint_dir` when there is one."""
    from trl import SFTTrainer

    from tinyreason.tracking import LiveMetricsCallback

    tokenizer = modeling.load_tokenizer(cfg.model)
    args = build_sft_config(cfg, checkpoint_dir)
    train_ds, val_ds = read_prompt_completion(train_file), read_prompt_completion(val_file)
    model = modeling.load_base_model(cfg.model, for_training=True)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tokenizer,
        peft_config=modeling.lora_config(cfg.train.lora),
        callbacks=[LiveMetricsCallback(live)] if live is not None else None,
    )
    resume = last_checkpoint(checkpoint_dir)
    if resume:
        log.info("resuming from %s", resume)
    output = trainer.train(resume_from_checkpoint=resume)
    trainable, total = trainer.model.get_nb_trainable_parameters()
    state = trainer.state
    train_losses = [e["loss"] for e in state.log_history if "loss" in e]
    runtime = output.metrics.get("train_runtime", 0.0)
    tokens = state.num_input_tokens_seen
    metrics = {
        "steps": state.global_step,
        "final_train_loss": round(train_losses[-1], 6) if train_losses else None,
        "best_eval_loss": round(state.best_metric, 6) if state.best_metric is not None else None,
        "best_checkpoint_step": _step_of(state.best_model_checkpoint),
        "train_runtime_seconds": round(runtime, 2),
        "train_tokens": int(tokens),
        "train_tokens_per_second": round(tokens / runtime, 1) if runtime else None,
        "trainable_parameters": int(trainable),
        "total_parameters": int(total),
        "resumed_from_step": _step_of(resume),
    }
    return TrainResult(trainer=trainer, metrics=metrics)


def _step_of(checkpoint: str | None) -> int | None:
    return int(checkpoint.rsplit("-", 1)[-1]) if checkpoint else None


def checkpoint_dir_for(root: Path, cfg: RunConfig, *inputs: Path) -> Path:
    """A checkpoint directory keyed by everything that shapes training (config + input bytes).

    A rerun after a kill finds its own checkpoints and resumes; a run with other params or data
    starts fresh instead of resuming someone else's optimizer state.
    """
    import hashlib

    from tinyreason.config import config_to_dict

    digest = hashlib.sha256()
    resolved = config_to_dict(cfg)
    for section in ("seed", "model", "prompts", "prepare", "train"):
        digest.update(json.dumps(resolved[section], sort_keys=True).encode())
    for path in inputs:
        digest.update(Path(path).read_bytes())
    return Path(root) / digest.hexdigest()[:16]
