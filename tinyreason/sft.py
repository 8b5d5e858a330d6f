"""Supervised fine-tuning with TRL's own SFTTrainer, collator and loss, and a PEFT LoRA adapter.

Read top to bottom: load tokenizer and base model -> plan how to run (`train.speed`) -> build
SFTConfig from the typed params -> train (resuming from the last complete checkpoint if one exists)
-> the best checkpoint by eval loss is reloaded -> the caller saves adapter, tokenizer and params.
The loss is TRL's: token-normalised NLL over the assistant turn only (`completion_only_loss`).

`train.speed` (planned by `plan_speed`) is a choice of settings, never other code:

- faithful: the seed stack as configured: QLoRA NF4 when `model.load_in_4bit`, micro-batch x
  accumulation and gradient checkpointing as set.
- fast: the same optimisation problem (same examples in each optimizer step, same lr schedule,
  optimizer and seed) with one micro-batch of the whole effective batch, bf16 LoRA instead of NF4 and
  no gradient checkpointing when the free GPU memory allows (else the next cheapest that fits). On
  one H100 these settings alone make plain TRL ~10x faster than the seed stack (bench/sft.py).

The plan is recorded in metrics/train.json (`speed`) and kept next to the checkpoints, so a resumed
run batches as it started.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from tinyreason import modeling, sources, tracking
from tinyreason.checkpoints import last_checkpoint, step_of
from tinyreason.config import RunConfig
from tinyreason.errors import TinyReasonError
from tinyreason.training import (GIB, ModelDims, TrainResult, build_trl_config, common_training_arguments,
                                 estimate_peak_bytes, model_dims, precision_flags, training_metrics)

log = logging.getLogger(__name__)

SPEED_PLAN_FILE = "speed_plan.json"
PREPARE_FIX = "rerun the prepare stage, `dvc repro prepare`"


def read_prompt_completion(path: Path):
    """Prepared JSONL -> a `datasets.Dataset` of prompt/completion pairs."""
    import datasets

    rows = sources.read_jsonl(path, PREPARE_FIX)
    if not rows:
        raise TinyReasonError(f"{path}: no examples (fix: {PREPARE_FIX})")
    return datasets.Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])


# ---------------------------------------------------------------------------------------------
# Planning: how to run the recipe (train.speed)


@dataclass(frozen=True)
class SpeedPlan:
    """How the SFT recipe runs. micro_batch x accumulation is always the recipe's effective batch."""

    speed: str
    micro_batch: int
    accumulation: int
    load_in_4bit: bool
    gradient_checkpointing: bool
    pure_bf16: bool = False         # bf16 weights and LoRA, no autocast (CUDA, no 4-bit)
    estimated_peak_gib: float | None = None
    reason: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _divisors_desc(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def plan_speed(cfg: RunConfig, *, cuda: bool, free_bytes: int | None = None, dims: ModelDims | None = None,
               lengths: list[int] | None = None, bf16_supported: bool = True) -> SpeedPlan:
    """Decide how to run `cfg`'s SFT recipe. Pure: everything it depends on is an argument.

    faithful -> the configuration as written. fast -> micro-batch = effective batch, no gradient
    checkpointing and bf16 LoRA (even when model.load_in_4bit asks for NF4) when the estimated peak
    for a micro-batch padded to the longest of `lengths` fits in 90% of `free_bytes`; otherwise the
    first that fits of: smaller micro-batches, then gradient checkpointing, then NF4 (when allowed).
    """
    t = cfg.train
    effective = t.per_device_train_batch_size * t.gradient_accumulation_steps
    four_bit_allowed = cfg.model.load_in_4bit and cuda
    if t.speed == "faithful":
        return SpeedPlan("faithful", t.per_device_train_batch_size, t.gradient_accumulation_steps,
                         load_in_4bit=cfg.model.load_in_4bit,  # without CUDA, modeling says how to fix it
                         gradient_checkpointing=t.gradient_checkpointing,
                         reason="train.speed=faithful: the seed stack as configured")
    if not cuda:  # CPU: no 4-bit; one micro-batch of the whole step (memory is rarely the limit)
        return SpeedPlan("fast", effective, 1, load_in_4bit=False, gradient_checkpointing=False,
                         reason="CPU: one micro-batch per step")
    if free_bytes is None or dims is None or not lengths:
        return SpeedPlan("fast", t.per_device_train_batch_size, t.gradient_accumulation_steps,
                         load_in_4bit=four_bit_allowed, gradient_checkpointing=t.gradient_checkpointing,
                         reason="no memory estimate possible: configured micro-batch and precision")
    longest, budget = max(lengths), 0.9 * free_bytes
    for four_bit in [False, True] if four_bit_allowed else [False]:
        for micro in _divisors_desc(effective):
            for ckpt in (False, True):
                tokens = micro * longest  # TRL's loss takes the logits of every position
                need = estimate_peak_bytes(dims, tokens, tokens, load_in_4bit=four_bit, gradient_checkpointing=ckpt)
                if need <= budget:
                    return SpeedPlan(
                        "fast", micro, effective // micro, load_in_4bit=four_bit, gradient_checkpointing=ckpt,
                        pure_bf16=not four_bit and bf16_supported, estimated_peak_gib=round(need / GIB, 2),
                        reason=f"estimated peak {need / GIB:.1f} GiB of {free_bytes / GIB:.1f} GiB free "
                               f"for {micro} sequences padded to {longest} tokens")
    return SpeedPlan("fast", 1, effective, load_in_4bit=four_bit_allowed, gradient_checkpointing=True,
                     reason=f"nothing estimated to fit in {free_bytes / GIB:.1f} GiB free: smallest setting")


def _token_lengths(tokenizer, dataset, max_length: int) -> list[int]:
    """Per example: tokens of prompt+completion (truncated to max_length)."""
    full = tokenizer([p + c for p, c in zip(dataset["prompt"], dataset["completion"])],
                     add_special_tokens=False)["input_ids"]
    return [min(len(f) + 1, max_length) for f in full]  # +1: an EOS TRL may append


def make_speed_plan(cfg: RunConfig, tokenizer, train_ds) -> SpeedPlan:
    """`plan_speed` with this machine's facts: CUDA, free GPU memory, model shape, data lengths."""
    cuda = torch.cuda.is_available()
    if cfg.train.speed == "faithful" or not cuda:
        return plan_speed(cfg, cuda=cuda)
    free, _ = torch.cuda.mem_get_info()
    return plan_speed(cfg, cuda=True, free_bytes=free, dims=model_dims(cfg.model),
                      lengths=_token_lengths(tokenizer, train_ds, cfg.train.max_length),
                      bf16_supported=modeling.compute_dtype(cfg.model) == torch.bfloat16)


def _plan_for(cfg: RunConfig, checkpoint_dir: Path, resume: str | None, tokenizer, train_ds) -> SpeedPlan:
    """A resumed run keeps the plan it started with (micro-batching must not change mid-run)."""
    saved = Path(checkpoint_dir) / SPEED_PLAN_FILE
    if resume and saved.is_file():
        plan = SpeedPlan(**json.loads(saved.read_text()))
        if plan.speed == cfg.train.speed:
            return plan
    plan = make_speed_plan(cfg, tokenizer, train_ds)
    Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(plan.to_dict(), indent=2))
    return plan


# ---------------------------------------------------------------------------------------------
# Training


def build_sft_config(cfg: RunConfig, output_dir: Path, plan: SpeedPlan | None = None):
    t = cfg.train
    plan = plan or plan_speed(cfg, cuda=torch.cuda.is_available())
    arguments = dict(
        **common_training_arguments(cfg, output_dir),
        per_device_train_batch_size=plan.micro_batch,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=plan.accumulation,
        eval_strategy="steps",
        eval_steps=t.eval_steps,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        max_length=t.max_length,
        packing=t.packing,
        completion_only_loss=t.completion_only_loss,
        gradient_checkpointing=plan.gradient_checkpointing,
        **precision_flags(cfg, autocast=not plan.pure_bf16),
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=False,
    )
    return build_trl_config("sft", arguments, t.sft.trl_args)  # train.sft.trl_args merged last


def build_trainer(cfg: RunConfig, train_file: Path, val_file: Path, checkpoint_dir: Path, live=None, *,
                  callbacks: list | None = None, plan: SpeedPlan | None = None):
    """TRL's SFTTrainer as is (its collator, its loss), given our data, config, plan and LoRA -> (trainer, plan)."""
    from trl import SFTTrainer

    tokenizer = modeling.load_tokenizer(cfg.model)
    train_ds, val_ds = read_prompt_completion(train_file), read_prompt_completion(val_file)
    plan = plan or _plan_for(cfg, checkpoint_dir, last_checkpoint(checkpoint_dir), tokenizer, train_ds)
    log.info("train.speed=%s: %s", plan.speed, plan)
    model = modeling.load_base_model(dataclasses.replace(cfg.model, load_in_4bit=plan.load_in_4bit),
                                     for_training=True)
    trainer = SFTTrainer(
        model=model,
        args=build_sft_config(cfg, checkpoint_dir, plan),
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tokenizer,
        peft_config=modeling.lora_config(cfg.train.lora),
        callbacks=([tracking.LiveMetricsCallback(live)] if live is not None else []) + list(callbacks or []) or None,
    )
    if plan.pure_bf16:
        # Like the seed stack's QLoRA (TRL keeps its adapter in bf16): bf16 LoRA weights, so no
        # autocast is needed and every matmul runs in bf16 without casts.
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.bfloat16)
    return trainer, plan


def train_sft(cfg: RunConfig, train_file: Path, val_file: Path, checkpoint_dir: Path, live=None, *,
              callbacks: list | None = None, plan: SpeedPlan | None = None) -> TrainResult:
    """Run SFT; resumes from the last complete checkpoint in `checkpoint_dir` when there is one.

    `callbacks` are extra transformers TrainerCallbacks; `plan` overrides the speed plan (bench/sft.py
    uses both to time steps and to measure one change at a time).
    """
    trainer, plan = build_trainer(cfg, train_file, val_file, checkpoint_dir, live, callbacks=callbacks, plan=plan)
    resume = last_checkpoint(checkpoint_dir)
    if resume:
        log.info("resuming from %s", resume)
    output = trainer.train(resume_from_checkpoint=resume)
    state = trainer.state
    train_losses = [e["loss"] for e in state.log_history if "loss" in e]
    metrics = {
        **training_metrics(trainer, output, resume),
        "final_train_loss": round(train_losses[-1], 6) if train_losses else None,
        "best_eval_loss": round(state.best_metric, 6) if state.best_metric is not None else None,
        "best_checkpoint_step": step_of(state.best_model_checkpoint),
        "speed": plan.to_dict(),
    }
    return TrainResult(trainer=trainer, metrics=metrics)


# ---------------------------------------------------------------------------------------------
# What the train stage checks and tidies before training


def check_training_inputs(cfg: RunConfig, train_file: Path, val_file: Path) -> None:
    """Prepared data exists, and no prompt is too long to leave room for its completion."""
    for path in (train_file, val_file):
        if not path.is_file():
            raise TinyReasonError(f"{path}: not found (fix: {PREPARE_FIX})")
    if cfg.train.method != "sft":  # GRPO has its own prompt limit (train.grpo.max_prompt_length)
        return
    tokenizer = modeling.load_tokenizer(cfg.model)
    max_length, truncated, total = cfg.train.max_length, 0, 0
    for path in (train_file, val_file):
        for i, row in sources.iter_jsonl(path, PREPARE_FIX):
            try:
                prompt, completion = row["prompt"], row["completion"]
            except (KeyError, TypeError):
                raise TinyReasonError(f"{path}:{i}: not a prompt/completion row (fix: {PREPARE_FIX})") from None
            n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            if n_prompt >= max_length:
                raise TinyReasonError(f"{path}:{i}: the prompt is {n_prompt} tokens, longer than "
                                      f"train.max_length={max_length}, so nothing of its answer would be "
                                      f"trained on (fix: set train.max_length above {n_prompt})")
            total += 1
            truncated += len(tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]) >= max_length
    if truncated:
        log.warning("%d of %d training/validation examples are longer than train.max_length=%d and lose "
                    "the end of their answer (raise train.max_length to keep them whole)",
                    truncated, total, max_length)


def shared_speed_plan(cfg: RunConfig, checkpoints: Path, state, train_file: Path):
    """Several processes must micro-batch alike (DDP syncs on every backward): rank 0 plans (from its
    GPU's free memory) and writes speed_plan.json, the others read it. None for one process."""
    if state is None or cfg.train.method != "sft":
        return None
    from tinyreason import distributed

    with distributed.main_process_first(state):
        if state.is_main_process:
            return _plan_for(cfg, checkpoints, last_checkpoint(checkpoints), modeling.load_tokenizer(cfg.model),
                             read_prompt_completion(train_file))
        return SpeedPlan(**json.loads((checkpoints / SPEED_PLAN_FILE).read_text()))
