"""GRPO with a PEFT LoRA adapter (the Tina recipe), through TRL's GRPOTrainer.

Read top to bottom: training problems (prepared GSM8K split, or a local/hub MATH-style set) ->
leak guard against every test benchmark -> prompts rendered with the chat format named by
`train.grpo.prompt` -> GRPOConfig from the typed params -> GRPOTrainer with the reward functions
of tinyreason/rewards.py -> train (resuming from the last complete checkpoint) -> the caller
saves the adapter. Checkpoints are never chosen on test data: the run's last step is the result.

Public API:
    train_grpo(cfg, train_file, checkpoint_dir, live=None, reward_funcs=None) -> sft.TrainResult
    load_problems(cfg, prepared_train) -> list[dict]        question/answer rows, leak-checked
    build_dataset(cfg, tokenizer, rows) -> datasets.Dataset  prompt/answer/answer_format columns
    build_grpo_config(cfg, output_dir) -> trl.GRPOConfig
    EngineRollout                                           TRL rollout_func on tinyreason.generation
    StopAtStep                                              the half-cosine trick's stop

What TRL logs (and so DVCLive plots under dvclive/train/plots/metrics/train/):
    reward, reward_std               weighted total reward (mean, std) -> train/reward.tsv
    rewards/<name>/mean|std          per reward function              -> train/rewards/<name>/mean.tsv
    completions/mean_length, .../clipped_ratio (share that hit max_completion_length)
    kl (when beta > 0), entropy, clip_ratio/*, learning_rate, loss, grad_norm
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

import torch
from transformers import TrainerCallback

from tinyreason import benchmarks, modeling, sft
from tinyreason.config import RECIPES_DIR, RunConfig, load_recipe_overlay, recipe_extends
from tinyreason.sft import TrainResult
from tinyreason.errors import DataError, TinyReasonError

log = logging.getLogger(__name__)

_QUESTION_FIELDS = ("problem", "question", "prompt", "Question")


# ---------------------------------------------------------------------------------------------
# Data


def _row_to_problem(row) -> dict | None:
    """A GSM8K row (question, answer '... #### N') or a MATH-style row (problem, solution, answer)
    -> {"question", "answer"}; None when malformed. The answer column wins over the solution's box."""
    from tinyreason.grading import extract_boxed_answer

    if not isinstance(row, dict):
        return None
    question = next((row[f] for f in _QUESTION_FIELDS if isinstance(row.get(f), str) and row[f].strip()), None)
    if question is None:
        return None
    answer = row.get("answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if isinstance(answer, str) and "####" in answer:
        parts = benchmarks.split_gsm8k_answer(answer)
        answer = parts[1] if parts else None
    if not (isinstance(answer, str) and answer.strip()):
        solution = row.get("solution")
        answer = extract_boxed_answer(solution) if isinstance(solution, str) else None
    if not answer:
        return None
    return {"question": question.strip(), "answer": answer.strip()}


def load_problems(cfg: RunConfig, prepared_train: Path) -> list[dict]:
    """question/answer rows for GRPO: the prepared split or train.grpo.train_path; leak-checked."""
    g = cfg.train.grpo
    if g.train_path is None:
        source = str(prepared_train)
        if not Path(prepared_train).is_file():
            raise DataError(f"{prepared_train}: not found (fix: run the prepare stage, or set train.grpo.train_path)")
        raw = [json.loads(line) for line in Path(prepared_train).read_text().splitlines() if line.strip()]
    else:
        source = g.train_path
        from tinyreason.data import GRPO_PATH_FIX, read_training_rows

        raw, _ = read_training_rows(g.train_path, g.hub_config, g.hub_split, GRPO_PATH_FIX)
    rows = [p for p in map(_row_to_problem, raw) if p is not None]
    if len(rows) < len(raw):
        log.warning("%s: dropped %d malformed row(s) (need a problem/question and an answer or a boxed "
                    "solution)", source, len(raw) - len(rows))
    if not rows:
        raise DataError(f"{source}: no usable rows (fix: each row needs 'problem' or 'question' and an "
                        "'answer' (or a solution with \\boxed{{}}))")
    # The one leak check (benchmarks.py), against every vendored benchmark.
    rows = benchmarks.check_no_test_overlap(rows, source, drop=g.drop_test_overlap,
                                            drop_fix=", or set train.grpo.drop_test_overlap=true to drop them")
    if g.num_samples is not None and g.num_samples < len(rows):
        rows = random.Random(cfg.seed).sample(rows, g.num_samples)
    return rows


def build_dataset(cfg: RunConfig, tokenizer, rows: list[dict]):
    """Rendered prompts (chat template + think prefix) with the gold answer and its grading format."""
    import datasets

    from tinyreason import prompts

    g = cfg.train.grpo
    prompt_cfg = cfg.prompt(g.prompt)
    out, too_long = [], 0
    for row in rows:
        text = prompts.render_generation_prompt(tokenizer, prompt_cfg, row["question"])
        if len(tokenizer(text)["input_ids"]) > g.max_prompt_length:
            too_long += 1
            continue
        out.append({"prompt": text, "answer": row["answer"], "answer_format": prompt_cfg.answer_format})
    if too_long:
        log.warning("dropped %d prompt(s) longer than train.grpo.max_prompt_length=%d tokens", too_long,
                    g.max_prompt_length)
    if not out:
        raise DataError(f"every prompt is longer than train.grpo.max_prompt_length={g.max_prompt_length} tokens "
                        "(fix: raise it)")
    return datasets.Dataset.from_list(out)


# ---------------------------------------------------------------------------------------------
# Trainer pieces


def build_grpo_config(cfg: RunConfig, output_dir: Path):
    from trl import GRPOConfig

    t, g = cfg.train, cfg.train.grpo
    dtype = modeling.compute_dtype(cfg.model)
    on_cuda = torch.cuda.is_available()
    scheduler_kwargs = {"min_lr_rate": g.min_lr_rate} if t.lr_scheduler_type == "cosine_with_min_lr" else None
    return GRPOConfig(
        **sft.common_training_arguments(cfg, output_dir),
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        lr_scheduler_kwargs=scheduler_kwargs,
        eval_strategy="no",  # checkpoints are not chosen on held-out scores, let alone test ones
        logging_first_step=True,
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        bf16=on_cuda and dtype == torch.bfloat16,
        fp16=on_cuda and dtype == torch.float16,
        # GRPO
        num_generations=g.num_generations,
        max_completion_length=g.max_completion_length,
        temperature=g.temperature,
        top_p=g.top_p,
        beta=g.beta,
        epsilon=g.epsilon,
        loss_type=g.loss_type,
        scale_rewards=g.scale_rewards,
        mask_truncated_completions=g.mask_truncated_completions,
        reward_weights=list(g.reward_weights),
        log_completions=g.log_completions,
    )


class StopAtStep(TrainerCallback):
    """Stop (and save) at `stop_at_step` while the lr schedule was built for `max_steps`."""

    def __init__(self, stop_at_step: int | None):
        self.stop_at_step = stop_at_step

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop_at_step is not None and state.global_step >= self.stop_at_step:
            control.should_training_stop = True
            control.should_save = True
        return control


def _quantized(model) -> bool:
    """4-bit (QLoRA) bases are not merged for rollouts: the engine runs the PEFT model as is."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "is_loaded_in_4bit", False) or getattr(base, "hf_quantizer", None) is not None)


class MergedShadow:
    """A plain copy of a PEFT LoRA model for rollouts: W + scaling * B @ A, refreshed on demand.

    Every tensor that LoRA does not touch (embeddings, norms, biases, rotary buffers) is shared with
    the training model by reference; each LoRA-wrapped linear gets its own merged weight, written in
    place by `refresh()` so CUDA graphs captured over it see new weights. The training model's own
    weights are never modified (merging and unmerging in bf16 in place would drift). Costs one copy
    of the adapted projections (~2.6 GB in bf16 for a 1.5B model)."""

    def __init__(self, peft_model):
        base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
        with torch.device("meta"):
            shadow = type(base)(base.config)
        self.pairs = []  # (merged weight, base weight, lora_A, lora_B, scaling)
        for name, module in shadow.named_modules():
            source = base.get_submodule(name)
            lora = hasattr(source, "base_layer") and hasattr(source, "lora_A")
            for pname, _ in list(module.named_parameters(recurse=False)):
                if lora and pname == "weight":
                    adapter = source.active_adapters[0]
                    w = source.base_layer.weight
                    merged = torch.empty_like(w, requires_grad=False)
                    self.pairs.append((merged, w, source.lora_A[adapter].weight, source.lora_B[adapter].weight,
                                       float(source.scaling[adapter])))
                    tensor = merged
                else:
                    holder = source.base_layer if lora else source
                    tensor = getattr(holder, pname).detach()
                setattr(module, pname, torch.nn.Parameter(tensor, requires_grad=False))
            for bname, _ in list(module.named_buffers(recurse=False)):
                module._buffers[bname] = getattr(source.base_layer if lora else source, bname)
        if not self.pairs:
            raise TinyReasonError("rollout merging needs a PEFT LoRA model (fix: set train.grpo.merge_for_rollout=false)")
        shadow.eval()
        self.model = shadow
        self.refresh()

    @torch.no_grad()
    def refresh(self) -> None:
        for merged, w, a, b, scaling in self.pairs:
            merged.copy_(torch.addmm(w.float(), b.float(), a.float(), alpha=scaling))


class EngineRollout:
    """TRL `rollout_func` that samples completions with tinyreason.generation's engine.

    TRL hands over the per-process prompts, each already repeated num_generations times; one
    completion per entry comes back. The engine (static KV cache, CUDA graphs, continuous batching)
    is built once and reused; the k completions of a prompt share its prefill. With `merge_for_rollout` it runs on a `MergedShadow` (plain weights,
    refreshed from the adapter before every rollout: no LoRA matmuls per token); else it runs the
    unmerged PEFT model and reads the LoRA weights in place. Either way every optimizer step is seen.
    """

    def __init__(self, settings, seed: int, max_prompt_length: int):
        self.g = settings
        self.seed = seed
        self.max_prompt_length = max_prompt_length
        self.engine = None
        self.shadow = None
        self.calls = 0

    def __call__(self, prompts: list, trainer) -> dict:
        from tinyreason.generation import GenerationEngine, eos_token_ids_of

        tokenizer = trainer.processing_class
        prompt_ids = tokenizer(text=list(prompts))["input_ids"]
        model = trainer.accelerator.unwrap_model(trainer.model)
        if getattr(self.g, "merge_for_rollout", False) and not _quantized(model):
            if self.shadow is None:
                self.shadow = MergedShadow(model)
            else:
                self.shadow.refresh()
        need = max(len(p) for p in prompt_ids) + self.g.max_completion_length
        if self.engine is None or self.engine.max_num_seqs < len(prompt_ids) or self.engine.max_model_len < need:
            # sized to the rollout (KV blocks for every completion at full length), so training keeps the rest
            self.engine = GenerationEngine(self.shadow.model if self.shadow else model, max_num_seqs=len(prompt_ids),
                                           max_model_len=max(need, self.max_prompt_length + self.g.max_completion_length))
            self.eos_ids = eos_token_ids_of(model, tokenizer)
        self.calls += 1
        completion_ids = self.engine.generate(prompt_ids, self.g.max_completion_length, temperature=self.g.temperature,
                                              top_p=self.g.top_p, seed=self.seed + 7919 * self.calls,
                                              eos_token_ids=self.eos_ids)
        return {"prompt_ids": [list(p) for p in prompt_ids], "completion_ids": [list(c) for c in completion_ids],
                "logprobs": None}


def use_engine(cfg: RunConfig) -> bool:
    rollout = cfg.train.grpo.rollout
    if rollout == "auto":
        return torch.cuda.is_available()
    return rollout == "engine"


def train_grpo(cfg: RunConfig, train_file: Path, checkpoint_dir: Path, live=None,
               reward_funcs: list | None = None) -> TrainResult:
    """Run GRPO; resumes from the last complete checkpoint in `checkpoint_dir` when there is one.

    GRPO keeps no eval loss (the last step is the result), so it takes no validation file. `reward_funcs`
    replaces the params' reward functions (tests' toy tasks); weights then default to 1 each.
    """
    from trl import GRPOTrainer

    from tinyreason import rewards
    from tinyreason.sft import _step_of, last_checkpoint
    from tinyreason.tracking import LiveMetricsCallback

    g = cfg.train.grpo
    tokenizer = modeling.load_tokenizer(cfg.model)
    dataset = build_dataset(cfg, tokenizer, load_problems(cfg, Path(train_file)))
    args = build_grpo_config(cfg, checkpoint_dir)
    if reward_funcs is None:
        reward_funcs, _ = rewards.build_reward_funcs(g)
    elif len(reward_funcs) != len(g.reward_weights):
        args.reward_weights = [1.0] * len(reward_funcs)
    model = modeling.load_base_model(cfg.model, for_training=True)
    if use_engine(cfg):  # rollout_func is marked experimental in TRL 1.16; we pin and test it
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    callbacks = [StopAtStep(g.stop_at_step)]
    if live is not None:
        callbacks.append(LiveMetricsCallback(live))
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=modeling.lora_config(cfg.train.lora),
        callbacks=callbacks,
        rollout_func=EngineRollout(g, cfg.seed, g.max_prompt_length) if use_engine(cfg) else None,
    )
    resume = last_checkpoint(checkpoint_dir)
    if resume:
        log.info("resuming from %s", resume)
    output = trainer.train(resume_from_checkpoint=resume)
    state = trainer.state
    history = [e for e in state.log_history if "reward" in e]
    trainable, total = trainer.model.get_nb_trainable_parameters()
    runtime = output.metrics.get("train_runtime", 0.0)

    def last(key):
        vals = [e[key] for e in history if key in e]
        return round(float(vals[-1]), 6) if vals else None

    metrics = {
        "method": "grpo",
        "steps": state.global_step,
        "best_eval_loss": None,  # GRPO: no eval loss; the last checkpoint is the result
        "final_reward": last("reward"),
        "final_rewards": {name: last(f"rewards/{name}/mean") for name in
                          [getattr(f, "__name__", str(f)) for f in reward_funcs]},
        "final_completion_mean_length": last("completions/mean_length"),
        "final_clipped_ratio": last("completions/clipped_ratio"),
        "final_kl": last("kl"),
        "train_runtime_seconds": round(runtime, 2),
        "train_tokens": int(state.num_input_tokens_seen),
        "train_tokens_per_second": round(state.num_input_tokens_seen / runtime, 1) if runtime else None,
        "trainable_parameters": int(trainable),
        "total_parameters": int(total),
        "train_problems": len(dataset),
        "rollout": "engine" if use_engine(cfg) else "trl",
        "resumed_from_step": _step_of(resume),
    }
    return TrainResult(trainer=trainer, metrics=metrics)


# ---------------------------------------------------------------------------------------------
# Recipe presets (recipes/*.yaml) -> one `dvc exp run -S key=value ...` command

def recipe_names(directory: Path = RECIPES_DIR) -> list[str]:
    """Presets: the recipes no other recipe extends (the leaves: open-rs1, still-3, ...)."""
    chain = recipe_extends(directory)
    return sorted(set(chain) - set(chain.values()))


def overlay_names(directory: Path = RECIPES_DIR) -> list[str]:
    """Shared overlays the presets extend (tina-base, eval-tina); each can also be applied on its own."""
    chain = recipe_extends(directory)
    return sorted(set(chain) & set(chain.values()))


def load_recipe(name: str, directory: Path = RECIPES_DIR) -> dict:
    """The preset's params overlay, with its `extends:` chain merged in (base first); config.py reads it."""
    return load_recipe_overlay(name, directory)


def flatten_params(params: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested overlay -> (dotted key, value) pairs in file order; lists stay whole values."""
    out = []
    for key, value in params.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(flatten_params(value, dotted + "."))
        else:
            out.append((dotted, value))
    return out


def _hydra_value(value) -> str:
    """A value in Hydra override syntax (what `dvc exp run -S` parses)."""
    import re

    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    text = str(value)
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./:-]*", text) and text not in ("null", "true", "false"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def recipe_command(name: str, params_path: Path | str = "params.yaml", directory: Path = RECIPES_DIR,
                   extra: list[str] | None = None) -> list[str]:
    """Validate the preset against config.py (merged over params_path) and build its dvc command."""
    from tinyreason.config import _deep_merge, config_from_dict, load_params_mapping

    recipe = load_recipe(name, directory)
    base = load_params_mapping(params_path)
    config_from_dict(_deep_merge(base or {}, recipe["params"]), source=f"recipes/{name}.yaml over {params_path}")
    cmd = ["dvc", "exp", "run", "-n", f"tina-{name}"]
    for key, value in flatten_params(recipe["params"]):
        # Hydra (under `dvc exp run -S`) refuses to set a key the params file lacks unless it is
        # marked `+` (append), e.g. evaluate.benchmarks.aime24.samples
        plus = "" if _has_key(base or {}, key) else "+"
        cmd += ["-S", f"{plus}{key}={_hydra_value(value)}"]
    return cmd + list(extra or [])


def _has_key(params: dict, dotted: str) -> bool:
    node = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _run_recipe(args) -> int:
    import shlex
    import subprocess

    if args.list or not args.name:
        for name in recipe_names():
            print(f"{name:18s} {load_recipe(name)['description']}")
        print("\nshared overlays (every preset above extends them; usable alone too):")
        for name in overlay_names():
            print(f"{name:18s} {load_recipe(name)['description']}")
        return 0
    cmd = recipe_command(args.name, args.params, extra=args.dvc_args)
    print(shlex.join(cmd))
    if args.dry_run:
        return 0
    return subprocess.call(cmd)


def add_parser(subparsers) -> None:
    """`tinyreason recipe NAME [--dry-run]`: run a Tina preset (recipes/NAME.yaml) as a DVC experiment."""
    p = subparsers.add_parser("recipe", help="run a Tina GRPO preset (recipes/*.yaml) as a DVC experiment",
                              description="Turn recipes/NAME.yaml into `dvc exp run -n tina-NAME -S key=value ...` "
                                          "(validated against params.yaml first) and run it.")
    p.add_argument("name", nargs="?", help="preset or shared overlay name, e.g. eval-tina (see --list)")
    p.add_argument("--dry-run", action="store_true", help="print the dvc command, do not run it")
    p.add_argument("--list", action="store_true", help="list the presets and the shared overlays they extend")
    p.add_argument("--params", default="params.yaml", help="params file the overlay is validated over")
    p.add_argument("dvc_args", nargs="*", help="extra arguments for dvc exp run (after --)")
    p.set_defaults(func=_run_recipe)
