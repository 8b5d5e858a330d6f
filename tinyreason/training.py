"""What SFT (sft.py) and GRPO (grpo.py) share: the TrainingArguments both build on, the precision flags,
the device check, the result type, the training-metrics keys both report, and the model-shape and
peak-memory estimate their plans (train.speed) use.

Seed, lr schedule, optimizer, checkpointing, logging, trackers and device come from the same params
for both methods, so they are written once here; each method adds its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tinyreason import tracking
from tinyreason.checkpoints import step_of
from tinyreason.config import RunConfig
from tinyreason.errors import TinyReasonError

log = logging.getLogger(__name__)

BITSANDBYTES_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit")
GIB = 1024**3


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


# ---------------------------------------------------------------------------------------------
# The memory estimate both methods' plans use (sft.plan_speed, grpo_plan.plan_grpo)


@dataclass(frozen=True)
class ModelDims:
    """What the memory estimate needs to know about the base model."""

    n_params: int
    embed_params: int
    hidden: int
    intermediate: int
    layers: int
    vocab: int


def model_dims(model_cfg) -> ModelDims | None:
    """Parameter count and shapes from the model's config, built on the meta device (no weights)."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from tinyreason import modeling

        config = AutoConfig.from_pretrained(modeling.resolve_model_location(model_cfg),
                                            **modeling._common_kwargs(model_cfg))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        text = config.get_text_config()
        n_params = sum(p.numel() for p in model.parameters())
        embed = model.get_input_embeddings().weight.numel()
        return ModelDims(n_params=n_params, embed_params=embed, hidden=text.hidden_size,
                         intermediate=getattr(text, "intermediate_size", 4 * text.hidden_size),
                         layers=text.num_hidden_layers, vocab=text.vocab_size)
    except Exception as exc:  # an estimate only: planning falls back to the safe choice
        log.warning("speed plan: cannot read the model's shape (%s); assuming it is large", exc)
        return None


def estimate_peak_bytes(dims: ModelDims, tokens: int, logit_tokens: int, *, load_in_4bit: bool,
                        gradient_checkpointing: bool) -> int:
    """A deliberately generous estimate of peak GPU memory for one LoRA micro-batch of `tokens`
    (padding included), of which `logit_tokens` have their full-vocabulary logits materialised.

    Weights (bf16, or NF4 with bf16 embeddings), activations kept for backward (bf16; about 18
    hidden-size and 4 intermediate-size vectors per token and layer, or one layer's worth plus the
    layer inputs with checkpointing), the logits (bf16 + fp32 + fp32 grad), and 1.5 GiB for LoRA
    weights, optimizer state, workspace and fragmentation.
    """
    if load_in_4bit:
        weights = 0.55 * (dims.n_params - dims.embed_params) + 2 * dims.embed_params
    else:
        weights = 2 * dims.n_params
    per_layer = 2 * (18 * dims.hidden + 4 * dims.intermediate)
    act = per_layer * (1 if gradient_checkpointing else dims.layers)
    if gradient_checkpointing:
        act += 2 * dims.hidden * dims.layers
    logits = 12 * dims.vocab * logit_tokens
    return int(weights + act * tokens + logits + 1.5 * GIB)
