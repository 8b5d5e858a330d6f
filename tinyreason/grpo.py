"""GRPO with a PEFT LoRA adapter (the Tina recipe), through TRL's GRPOTrainer.

Read top to bottom: training problems (prepared GSM8K split, or a local/hub MATH-style set) ->
leak guard against every test benchmark -> prompts rendered with the chat format named by
`train.grpo.prompt` -> GRPOConfig from the typed params -> GRPOTrainer with the reward functions
of tinyreason/rewards.py -> train (resuming from the last complete checkpoint) -> the caller
saves the adapter. Checkpoints are never chosen on test data: the run's last step is the result.

Public API:
    train_grpo(cfg, train_file, checkpoint_dir, live=None, reward_funcs=None) -> training.TrainResult
    load_problems(cfg, prepared_train) -> list[dict]        question/answer rows, leak-checked
    build_dataset(cfg, tokenizer, rows) -> datasets.Dataset  prompt/answer/answer_format columns
    build_grpo_config(cfg, output_dir, plan) -> trl.GRPOConfig  (micro-batching from grpo_plan.py)
    build_trainer(cfg, train_file, checkpoint_dir, ...) -> trl.GRPOTrainer  (TRL's class: its loss)
    StopAtStep                                              the half-cosine trick's stop
Rollouts (engine, TRL's generate, vLLM) are tinyreason/rollout.py; the presets' command is
tinyreason/recipes.py.

What TRL logs (and so DVCLive plots under dvclive/train/plots/metrics/train/):
    reward, reward_std               weighted total reward (mean, std) -> train/reward.tsv
    rewards/<name>/mean|std          per reward function              -> train/rewards/<name>/mean.tsv
    completions/mean_length, .../clipped_ratio (share that hit max_completion_length)
    kl (when beta > 0), entropy, clip_ratio/*, learning_rate, loss, grad_norm
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

from transformers import TrainerCallback

from tinyreason import benchmarks, modeling, monitoring, rollout, sources
from tinyreason.checkpoints import last_checkpoint
from tinyreason.config import RunConfig
from tinyreason.errors import DataError
from tinyreason.grpo_plan import GrpoPlan, make_grpo_plan, plan_grpo
from tinyreason.training import (TrainResult, build_trl_config, common_training_arguments, precision_flags,
                                 training_metrics)

log = logging.getLogger(__name__)

_QUESTION_FIELDS = ("problem", "question", "prompt", "Question")
PREPARED_FIX = "rerun the prepare stage, `dvc repro prepare`"


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
        raw = sources.read_jsonl(prepared_train, PREPARED_FIX)
    else:
        source = g.train_path
        from tinyreason.data import GRPO_PATH_FIX, read_training_rows

        raw, _ = read_training_rows(g.train_path, g.hub_config, g.hub_split, GRPO_PATH_FIX, g.hub_revision)
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


def build_grpo_config(cfg: RunConfig, output_dir: Path, plan: GrpoPlan | None = None):
    t, g = cfg.train, cfg.train.grpo
    plan = plan or plan_grpo(cfg, cuda=False)
    scheduler_kwargs = {"min_lr_rate": g.min_lr_rate} if t.lr_scheduler_type == "cosine_with_min_lr" else None
    arguments = dict(
        **common_training_arguments(cfg, output_dir),
        # the rollout batch (micro-batch x accumulation) is the params'; its cut is the memory plan's
        per_device_train_batch_size=plan.micro_batch,
        gradient_accumulation_steps=plan.accumulation,
        lr_scheduler_kwargs=scheduler_kwargs,
        eval_strategy="no",  # checkpoints are not chosen on held-out scores, let alone test ones
        logging_first_step=True,
        gradient_checkpointing=plan.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if plan.gradient_checkpointing else None,
        **precision_flags(cfg),
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
        **rollout.vllm_arguments(g),
    )
    return build_trl_config("grpo", arguments, g.trl_args)  # train.grpo.trl_args merged last


class StopAtStep(TrainerCallback):
    """Stop (and save) at `stop_at_step` while the lr schedule was built for `max_steps`."""

    def __init__(self, stop_at_step: int | None):
        self.stop_at_step = stop_at_step

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop_at_step is not None and state.global_step >= self.stop_at_step:
            control.should_training_stop = True
            control.should_save = True
        return control


def build_trainer(cfg: RunConfig, train_file: Path, checkpoint_dir: Path, live=None, reward_funcs: list | None = None):
    """TRL's GRPOTrainer as is (its loss, its advantages), given our data, config, rewards and rollouts.

    `reward_funcs` replaces the params' reward functions (tests' toy tasks); weights then default to 1 each.
    """
    from trl import GRPOTrainer

    from tinyreason import rewards
    from tinyreason.tracking import LiveMetricsCallback

    g = cfg.train.grpo
    tokenizer = modeling.load_tokenizer(cfg.model)
    # train.grpo.held_out problems are held out of training and scored every eval_steps (monitoring.py)
    train_rows, held_rows = monitoring.hold_out(load_problems(cfg, Path(train_file)), g.held_out, cfg.seed)
    dataset = build_dataset(cfg, tokenizer, train_rows)
    plan = make_grpo_plan(cfg)
    log.info("GRPO memory plan: %s", plan)
    args = build_grpo_config(cfg, checkpoint_dir, plan)
    if reward_funcs is None:
        reward_funcs, _ = rewards.build_reward_funcs(g)
    elif len(reward_funcs) != len(g.reward_weights):
        args.reward_weights = [1.0] * len(reward_funcs)
    sampler = monitoring.CompletionSampler(live.dir if live is not None else None)  # completions.jsonl
    model = modeling.load_base_model(cfg.model, for_training=True)
    engine = rollout.rollout_kind(cfg) == "engine"
    if engine:  # rollout_func is marked experimental in TRL 1.16; we pin and test it
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    callbacks = [StopAtStep(g.stop_at_step), sampler]
    if held_rows:
        callbacks.append(monitoring.HeldOutMonitor(build_dataset(cfg, tokenizer, held_rows), tokenizer,
                                                   cfg.train.eval_steps, g.max_completion_length, cfg.seed, live))
    if live is not None:
        callbacks.append(LiveMetricsCallback(live))
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=sampler.wrap(reward_funcs),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=modeling.lora_config(cfg.train.lora),
        callbacks=callbacks,
        rollout_func=rollout.EngineRollout(g, cfg.seed, g.max_prompt_length) if engine else None,
    )
    trainer.memory_plan = plan
    return trainer


def train_grpo(cfg: RunConfig, train_file: Path, checkpoint_dir: Path, live=None,
               reward_funcs: list | None = None) -> TrainResult:
    """Run GRPO; resumes from the last complete checkpoint in `checkpoint_dir` when there is one.

    GRPO keeps no eval loss (the last step is the result), so it takes no validation file.
    """
    trainer = build_trainer(cfg, train_file, checkpoint_dir, live, reward_funcs)
    resume = last_checkpoint(checkpoint_dir)
    if resume:
        log.info("resuming from %s", resume)
    output = trainer.train(resume_from_checkpoint=resume)
    history = [e for e in trainer.state.log_history if "reward" in e]

    def last(key):
        vals = [e[key] for e in history if key in e]
        return round(float(vals[-1]), 6) if vals else None

    metrics = {
        "method": "grpo",
        **training_metrics(trainer, output, resume),
        "best_eval_loss": None,  # GRPO: no eval loss; the last checkpoint is the result
        "final_reward": last("reward"),
        "final_rewards": {name: last(f"rewards/{name}/mean") for name in trainer.reward_func_names},
        "final_completion_mean_length": last("completions/mean_length"),
        "final_clipped_ratio": last("completions/clipped_ratio"),
        "final_kl": last("kl"),
        # the held-out slice (train.grpo.held_out) at the last step: accuracy, format rate, mean length
        "final_heldout": {k.split("/", 1)[1]: round(float(v), 6) for k, v in next(
            (e for e in reversed(trainer.state.log_history) if "eval_heldout/accuracy" in e), {}).items()
            if k != "step"},
        "train_problems": len(trainer.train_dataset),
        "rollout": rollout.rollout_kind(cfg),
        "memory_plan": getattr(trainer, "memory_plan", None) and trainer.memory_plan.to_dict(),
    }
    return TrainResult(trainer=trainer, metrics=metrics)
