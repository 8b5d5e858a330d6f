"""Supervised fine-tuning with TRL's SFTTrainer and a PEFT LoRA adapter (QLoRA on CUDA).

Read top to bottom: load tokenizer and base model -> plan how to run (`train.speed`) -> build
SFTConfig from the typed params -> train (resuming from the last complete checkpoint if one exists)
-> the best checkpoint by eval loss is reloaded -> the caller saves adapter, tokenizer and params.

Two ways to run the same recipe (`train.speed`, planned by `plan_speed`):

- faithful: the seed stack as configured: TRL SFTTrainer with its own loss, QLoRA NF4 when
  `model.load_in_4bit`, micro-batch x accumulation and gradient checkpointing as set.
- fast: the same optimisation problem (same examples in each optimizer step, same token-normalised
  loss: summed token NLL / completion tokens of the whole step, same lr schedule, optimizer and
  seed) run for speed: one micro-batch of the whole effective batch, bf16 LoRA instead of NF4 and
  no gradient checkpointing when the free GPU memory allows (else the next cheapest that fits),
  padding-free batches (sequences concatenated, block-diagonal causal attention), a lean loss that
  projects only completion positions through the LM head and skips TRL's per-step entropy and
  accuracy metrics (device syncs), and SDPA without its cuDNN backend (whose per-call CPU cost
  with masked batches dominated the step). Liger's kernels are opt-in (`make_speed_plan(liger=True)`):
  they did not pay in this CPU-launch-bound regime. bench/sft.py measures both paths on one GPU
  (bench/results/sft-h100-*); tests/test_sft.py checks on CPU that both learn the same.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from tinyreason import modeling, tracking
from tinyreason.training_args import build_trl_config, common_training_arguments
from tinyreason.config import RunConfig
from tinyreason.errors import TinyReasonError

log = logging.getLogger(__name__)

SPEED_PLAN_FILE = "speed_plan.json"
GIB = 1024**3


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
    padding_free: bool = False      # sequences concatenated, positions restart per sequence
    lean_loss: bool = False         # FastSFTTrainer.compute_loss instead of TRL's
    liger: bool = False             # Liger RMSNorm/RoPE/SwiGLU kernels (CUDA, when installed)
    pure_bf16: bool = False         # bf16 weights and LoRA, no autocast (CUDA, no 4-bit)
    optim: str | None = None        # None: train.optim
    # cuDNN's fused attention costs ~2-4 ms of CPU per call with the per-batch masks of padded or
    # padding-free batches (measured on H100, bench/results/sft-h100-*): off, SDPA uses its
    # memory-efficient kernel, same math.
    cudnn_attention: bool = True
    estimated_peak_gib: float | None = None
    reason: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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
        from transformers import AutoConfig, AutoModelForCausalLM

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


def estimate_peak_bytes(dims: ModelDims, tokens: int, label_tokens: int, *, load_in_4bit: bool,
                        gradient_checkpointing: bool) -> int:
    """A deliberately generous estimate of peak GPU memory for one LoRA micro-batch.

    Weights (bf16, or NF4 with bf16 embeddings), activations kept for backward (bf16; about 18
    hidden-size and 4 intermediate-size vectors per token and layer, or one layer's worth plus the
    layer inputs with checkpointing), logits of the completion positions (bf16 + fp32 + fp32 grad),
    and 1.5 GiB for LoRA weights, optimizer state, workspace and fragmentation.
    """
    if load_in_4bit:
        weights = 0.55 * (dims.n_params - dims.embed_params) + 2 * dims.embed_params
    else:
        weights = 2 * dims.n_params
    per_layer = 2 * (18 * dims.hidden + 4 * dims.intermediate)
    act = per_layer * (1 if gradient_checkpointing else dims.layers)
    if gradient_checkpointing:
        act += 2 * dims.hidden * dims.layers
    logits = 12 * dims.vocab * label_tokens
    return int(weights + act * tokens + logits + 1.5 * GIB)


def _divisors_desc(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def plan_speed(cfg: RunConfig, *, cuda: bool, free_bytes: int | None = None, dims: ModelDims | None = None,
               lengths: list[int] | None = None, label_lengths: list[int] | None = None,
               liger_available: bool = False, bf16_supported: bool = True) -> SpeedPlan:
    """Decide how to run `cfg`'s SFT recipe. Pure: everything it depends on is an argument.

    faithful -> the configuration as written. fast -> micro-batch = effective batch, no gradient
    checkpointing and bf16 LoRA (even when model.load_in_4bit asks for NF4) when the estimated peak
    for the longest micro-batch of `lengths` fits in 90% of `free_bytes`; otherwise the first that
    fits of: smaller micro-batches, then gradient checkpointing, then NF4 (when the config allows 4-bit).
    """
    t = cfg.train
    effective = t.per_device_train_batch_size * t.gradient_accumulation_steps
    four_bit_allowed = cfg.model.load_in_4bit and cuda
    if t.speed == "faithful":
        return SpeedPlan("faithful", t.per_device_train_batch_size, t.gradient_accumulation_steps,
                         load_in_4bit=cfg.model.load_in_4bit,  # without CUDA, modeling says how to fix it
                         gradient_checkpointing=t.gradient_checkpointing,
                         reason="train.speed=faithful: the seed stack as configured")
    common = dict(padding_free=True, lean_loss=True, cudnn_attention=not cuda)
    if not cuda:
        # CPU: no 4-bit, no Liger; one micro-batch of the whole step (memory is rarely the limit).
        return SpeedPlan("fast", effective, 1, load_in_4bit=False, gradient_checkpointing=False, **common,
                         reason="CPU: one padding-free micro-batch per step")
    if free_bytes is None or dims is None or not lengths:
        return SpeedPlan("fast", t.per_device_train_batch_size, t.gradient_accumulation_steps,
                         load_in_4bit=four_bit_allowed, gradient_checkpointing=t.gradient_checkpointing,
                         liger=liger_available, **common,
                         reason="no memory estimate possible: configured micro-batch and precision")
    longest = sorted(lengths, reverse=True)
    longest_labels = sorted(label_lengths or lengths, reverse=True)
    budget = 0.9 * free_bytes
    precisions = [False, True] if four_bit_allowed else [False]
    for four_bit in precisions:
        for micro in _divisors_desc(effective):
            for ckpt in (False, True):
                need = estimate_peak_bytes(dims, sum(longest[:micro]), sum(longest_labels[:micro]),
                                           load_in_4bit=four_bit, gradient_checkpointing=ckpt)
                if need <= budget:
                    pure = not four_bit and bf16_supported
                    return SpeedPlan(
                        "fast", micro, effective // micro, load_in_4bit=four_bit, gradient_checkpointing=ckpt,
                        liger=liger_available, pure_bf16=pure, estimated_peak_gib=round(need / GIB, 2), **common,
                        reason=f"estimated peak {need / GIB:.1f} GiB of {free_bytes / GIB:.1f} GiB free "
                               f"for the {micro} longest sequences ({sum(longest[:micro])} tokens)")
    return SpeedPlan("fast", 1, effective, load_in_4bit=four_bit_allowed, gradient_checkpointing=True,
                     liger=liger_available, **common,
                     reason=f"nothing estimated to fit in {free_bytes / GIB:.1f} GiB free: smallest setting")


def _token_lengths(tokenizer, dataset, max_length: int) -> tuple[list[int], list[int]]:
    """Per example: tokens of prompt+completion and of the completion (truncated to max_length)."""
    full = tokenizer([p + c for p, c in zip(dataset["prompt"], dataset["completion"])],
                     add_special_tokens=False)["input_ids"]
    prompts = tokenizer(list(dataset["prompt"]), add_special_tokens=False)["input_ids"]
    lengths = [min(len(f) + 1, max_length) for f in full]  # +1: an EOS TRL may append
    labels = [max(n - len(pr), 1) for n, pr in zip(lengths, prompts)]
    return lengths, labels


def make_speed_plan(cfg: RunConfig, tokenizer, train_ds, liger: bool = False) -> SpeedPlan:
    """`plan_speed` with this machine's facts: CUDA, free GPU memory, model shape, data lengths.

    Liger's Triton kernels are opt-in (`liger=True`, used when installed): at this batch size the
    step is bound by CPU launch overhead, and Liger's autograd Functions cost more CPU per call than
    the aten ops they replace (bench/results/sft-h100-*: fast-liger vs fast, and the profile).
    """
    cuda = torch.cuda.is_available()
    if cfg.train.speed == "faithful" or not cuda:
        return plan_speed(cfg, cuda=cuda)
    free, _ = torch.cuda.mem_get_info()
    lengths, label_lengths = _token_lengths(tokenizer, train_ds, cfg.train.max_length)
    return plan_speed(cfg, cuda=True, free_bytes=free, dims=model_dims(cfg.model), lengths=lengths,
                      label_lengths=label_lengths, liger_available=liger and liger_installed(),
                      bf16_supported=modeling.compute_dtype(cfg.model) == torch.bfloat16)


def liger_installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None and importlib.util.find_spec("triton") is not None


# ---------------------------------------------------------------------------------------------
# The fast path's batches and loss


@dataclass
class PaddingFreeCollator:
    """Tokenized examples (input_ids, labels) -> one row of concatenated sequences, no padding.

    Positions restart at 0 for each sequence, which transformers turns into a block-diagonal causal
    mask, so no token attends across a sequence boundary. `shift_labels` holds each position's
    next-token target within its own sequence (-100 at a sequence's last token and on the prompt);
    Trainer counts it for `num_items_in_batch`, exactly the count TRL's padded batches give.
    `loss_index`/`loss_target` list the positions that carry a target, computed here on the CPU so
    the loss needs no device-to-host sync. `padding_free=False` gives right-padded rows with an
    attention mask instead (same targets), for comparison.
    """

    pad_token_id: int
    padding_free: bool = True

    def __call__(self, examples: list[dict]) -> dict:
        rows = []
        for ex in examples:
            x = list(ex["input_ids"])
            y = list(ex.get("labels", x))
            rows.append((x, [-100] + y[1:], y[1:] + [-100]))
        if self.padding_free:
            ids = [t for x, _, _ in rows for t in x]
            batch = {"input_ids": torch.tensor([ids], dtype=torch.long),
                     "position_ids": torch.tensor([[i for x, _, _ in rows for i in range(len(x))]], dtype=torch.long),
                     "labels": torch.tensor([[t for _, y, _ in rows for t in y]], dtype=torch.long),
                     "shift_labels": torch.tensor([[t for _, _, s in rows for t in s]], dtype=torch.long)}
        else:
            width = max(len(x) for x, _, _ in rows)
            pad = [width - len(x) for x, _, _ in rows]
            batch = {"input_ids": torch.tensor([x + [self.pad_token_id] * n for (x, _, _), n in zip(rows, pad)]),
                     "attention_mask": torch.tensor([[1] * len(x) + [0] * n for (x, _, _), n in zip(rows, pad)]),
                     "labels": torch.tensor([y + [-100] * n for (_, y, _), n in zip(rows, pad)]),
                     "shift_labels": torch.tensor([s + [-100] * n for (_, _, s), n in zip(rows, pad)])}
        flat = batch["shift_labels"].flatten()
        index = (flat != -100).nonzero().flatten()
        batch.update(loss_index=index, loss_target=flat[index])
        return batch


_LEAN_KEYS = ("labels", "shift_labels", "loss_index", "loss_target")


def _causal_lm(model):
    """The transformers causal LM under PEFT / accelerate wrappers (LoRA layers are injected in place)."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def lean_causal_lm_loss(model, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
    """Summed next-token NLL over the positions in `loss_index`, / `num_items_in_batch` (the whole
    optimizer step's target count) or else / this batch's count: TRL's and Trainer's normalisation.

    Only the target positions go through the LM head; the cross-entropy runs in fp32.
    """
    index, target = inputs["loss_index"], inputs["loss_target"]
    lm = _causal_lm(model)
    forward = {k: v for k, v in inputs.items() if k not in _LEAN_KEYS}
    text = lm.config.get_text_config()
    plain_head = not getattr(text, "final_logit_softcapping", None) and getattr(text, "logits_scaling", 1.0) == 1.0
    wrapped = hasattr(model, "module")  # DDP / DeepSpeed: gradient sync is armed in the wrapper's forward
    if plain_head and wrapped and forward["input_ids"].size(0) == 1:
        # Several processes: through the wrapper, the LM head on the target positions only (one row).
        logits = model(**forward, use_cache=False, logits_to_keep=index).logits[0].float()
    elif plain_head and hasattr(lm, "get_decoder") and not wrapped:
        hidden = lm.get_decoder()(**forward, use_cache=False).last_hidden_state
        picked = hidden.reshape(-1, hidden.size(-1)).index_select(0, index)
        logits = lm.get_output_embeddings()(picked).float()
    else:  # a model with a special head: its own forward, then pick the target positions
        logits = model(**forward, use_cache=False).logits
        logits = logits.reshape(-1, logits.size(-1)).index_select(0, index).float()
    nll = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else index.numel()
    return nll / torch.as_tensor(count, device=nll.device).clamp(min=1)


def _fast_trainer_class():
    from trl import SFTTrainer

    class FastSFTTrainer(SFTTrainer):
        """SFTTrainer with `lean_causal_lm_loss`: same loss value, no TRL per-step metrics or syncs."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # The loss divides by `num_items_in_batch` itself; Trainer must count it and not also
            # divide by the accumulation steps.
            self.model_accepts_loss_kwargs = True

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = lean_causal_lm_loss(model, inputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                # As Trainer.compute_loss: num_items_in_batch counts every process's tokens and DDP
                # averages gradients over processes, so scale back up (no-op for one process).
                loss = loss * self.accelerator.num_processes
            return (loss, None) if return_outputs else loss

    return FastSFTTrainer


# ---------------------------------------------------------------------------------------------
# Training


def build_sft_config(cfg: RunConfig, output_dir: Path, plan: SpeedPlan | None = None):
    t = cfg.train
    plan = plan or plan_speed(cfg, cuda=torch.cuda.is_available())
    dtype = modeling.compute_dtype(cfg.model)
    on_cuda = torch.cuda.is_available()
    amp = on_cuda and not plan.pure_bf16
    extra = {}
    if plan.liger:
        extra["use_liger_kernel"] = True
    arguments = dict(
        **common_training_arguments(cfg, output_dir, optim=plan.optim or t.optim),
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
        bf16=amp and dtype == torch.bfloat16,
        fp16=amp and dtype == torch.float16,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=False,
        **extra,
    )
    return build_trl_config("sft", arguments, t.sft.trl_args)


def last_checkpoint(output_dir: Path) -> str | None:
    """The newest complete checkpoint in output_dir (Trainer writes trainer_state.json last)."""
    from transformers.trainer_utils import get_last_checkpoint

    if not Path(output_dir).is_dir():
        return None
    found = get_last_checkpoint(str(output_dir))
    if found and not (Path(found) / "trainer_state.json").is_file():
        return None
    return found


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


def train_sft(cfg: RunConfig, train_file: Path, val_file: Path, checkpoint_dir: Path, live=None, *,
              callbacks: list | None = None, plan: SpeedPlan | None = None) -> TrainResult:
    """Run SFT; resumes from the last complete checkpoint in `checkpoint_dir` when there is one.

    `callbacks` are extra transformers TrainerCallbacks; `plan` overrides the speed plan (bench/sft.py
    uses both to time steps and to measure one change at a time).
    """
    from trl import SFTTrainer

    tokenizer = modeling.load_tokenizer(cfg.model)
    train_ds, val_ds = read_prompt_completion(train_file), read_prompt_completion(val_file)
    resume = last_checkpoint(checkpoint_dir)
    plan = plan or _plan_for(cfg, checkpoint_dir, resume, tokenizer, train_ds)
    log.info("train.speed=%s: %s", plan.speed, plan)
    args = build_sft_config(cfg, checkpoint_dir, plan)
    model = modeling.load_base_model(dataclasses.replace(cfg.model, load_in_4bit=plan.load_in_4bit),
                                     for_training=True)
    trainer_cls = _fast_trainer_class() if plan.lean_loss else SFTTrainer
    extra = {}
    if plan.lean_loss:
        extra["data_collator"] = PaddingFreeCollator(tokenizer.pad_token_id, padding_free=plan.padding_free)
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tokenizer,
        peft_config=modeling.lora_config(cfg.train.lora),
        callbacks=([tracking.LiveMetricsCallback(live)] if live is not None else []) + list(callbacks or []) or None,
        **extra,
    )
    if plan.pure_bf16:
        # Like the seed stack's QLoRA (TRL keeps its adapter in bf16): bf16 LoRA weights, so no
        # autocast is needed and every matmul runs in bf16 without casts.
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.bfloat16)
    if resume:
        log.info("resuming from %s", resume)
    cudnn_sdp = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(cudnn_sdp and plan.cudnn_attention)
    try:
        output = trainer.train(resume_from_checkpoint=resume)
    finally:
        torch.backends.cuda.enable_cudnn_sdp(cudnn_sdp)
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
        "speed": plan.to_dict(),
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
    # Where the curves are reported does not shape training: adding a tracker still resumes, and
    # existing checkpoint directories keep their names.
    del resolved["train"]["report_to"]
    for section in ("seed", "model", "prompts", "prepare", "train"):
        digest.update(json.dumps(resolved[section], sort_keys=True).encode())
    for path in inputs:
        digest.update(Path(path).read_bytes())
    return Path(root) / digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# What the train stage checks and tidies before training


def check_training_inputs(cfg: RunConfig, train_file: Path, val_file: Path) -> None:
    """Prepared data exists, and no prompt is too long to leave room for its completion."""
    for path in (train_file, val_file):
        if not path.is_file():
            raise TinyReasonError(f"{path}: not found (fix: run the prepare stage, `dvc repro prepare`)")
    if cfg.train.method != "sft":  # GRPO has its own prompt limit (train.grpo.max_prompt_length)
        return
    tokenizer = modeling.load_tokenizer(cfg.model)
    max_length, truncated, total = cfg.train.max_length, 0, 0
    for path in (train_file, val_file):
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompt, completion = row["prompt"], row["completion"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise TinyReasonError(f"{path}:{i}: not a prompt/completion row (fix: rerun the prepare "
                                      "stage, `dvc repro prepare`)") from None
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


def check_device_support(cfg: RunConfig, checkpoints: Path) -> None:
    """4-bit weights and 8-bit optimizers need CUDA: say so before anything is written."""
    if torch.cuda.is_available():
        return
    modeling.quantization_config(cfg.model)  # one-line error when model.load_in_4bit asks for NF4
    common_training_arguments(cfg, checkpoints)  # one-line error for a bitsandbytes optimizer


def drop_incomplete_checkpoints(checkpoints: Path) -> None:
    """A checkpoint killed while being written has no (or a truncated) trainer_state.json, which
    Trainer writes last: remove it, so the run resumes from the newest complete checkpoint."""
    if not checkpoints.is_dir():
        return
    plan = checkpoints / SPEED_PLAN_FILE
    try:
        if plan.is_file():
            json.loads(plan.read_text())
    except ValueError:
        plan.unlink()
    for ckpt in checkpoints.glob("checkpoint-*"):
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
        except (OSError, ValueError):
            log.warning("removing incomplete checkpoint %s (killed while it was written)", ckpt)
            shutil.rmtree(ckpt, ignore_errors=True)


def final_step(cfg: RunConfig) -> int:
    """The global step a finished run of `cfg` ends at (GRPO's half-cosine trick stops early)."""
    stop = cfg.train.grpo.stop_at_step
    return stop if cfg.train.method == "grpo" and stop is not None else cfg.train.max_steps


def drop_finished_run(checkpoints: Path, cfg: RunConfig) -> None:
    """Remove the checkpoints of a run that already reached its final step, so a rerun starts over.

    Trainer saves a checkpoint at the final step, and resuming from it is not a no-op: Trainer
    skips the batches already seen, then runs one more step before it checks max_steps, so each
    rerun of a finished stage (`dvc repro -f train`, or after its outputs were deleted) trained
    5, 6, 7... steps for max_steps 4. Starting over gives the first run's outputs again
    (bit-identical on CPU: tests/test_reliability.py). Call after `drop_incomplete_checkpoints`.
    """
    last = last_checkpoint(checkpoints)
    if last is None:
        return
    step = json.loads((Path(last) / "trainer_state.json").read_text()).get("global_step", 0)
    if step >= final_step(cfg):
        log.info("%s finished at step %d: training again from the start (resuming a finished run "
                 "would add a step)", checkpoints, step)
        shutil.rmtree(checkpoints)


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
