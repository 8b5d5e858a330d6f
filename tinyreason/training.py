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

    if not trl_args:  # nothing to check: TRL (and torch) stay unimported in the check stage
        return
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
    kv_heads: int = 0   # the K/V cache's shape (GRPO's rollout engine); 0: unknown
    head_dim: int = 0


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
                         layers=text.num_hidden_layers, vocab=text.vocab_size,
                         kv_heads=getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
                         head_dim=getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)
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
