"""GRPO while it trains: a held-out slice of the training problems scored every `train.eval_steps`, and a
few of the completions the policy writes kept at every logging step.

    hold_out(rows, count, seed) -> (train_rows, held_rows)   never test problems: a slice of the training set
    HeldOutMonitor   every eval_steps: greedy completions for the held-out problems, graded by the evaluate
                     stage's grader -> eval/heldout/{accuracy,format_rate,mean_length,truncated_rate} curves
                     (DVCLive: dvclive/train/plots/metrics/eval/heldout/*.tsv; the run's log history, so a
                     resumed run replays them)
    CompletionSampler wraps the reward functions to see each batch; at every logging step the first
                     SAMPLES_PER_LOG completions with their rewards go to dvclive/train/completions.jsonl

Checkpoints are still never chosen on these scores (GRPO's result is its last step): they show what the
model does while it trains, and stop a run that has gone wrong from going unnoticed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from transformers import TrainerCallback

from tinyreason.errors import DataError

SAMPLES_PER_LOG = 4
COMPLETIONS_FILE = "completions.jsonl"  # under the DVCLive directory (dvclive/train/)


def hold_out(rows: list[dict], count: int, seed: int) -> tuple[list[dict], list[dict]]:
    """`count` rows (chosen with `seed`) held out of training for monitoring; the rest, in order, train."""
    if count == 0:
        return rows, []
    if count >= len(rows):
        raise DataError(f"train.grpo.held_out={count} leaves none of the {len(rows)} training problems to train "
                        f"on (fix: set train.grpo.held_out below {len(rows)}, or 0 to turn monitoring off)")
    held = set(random.Random(seed).sample(range(len(rows)), count))
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def score_held_out(model, tokenizer, held, max_new_tokens: int, seed: int) -> dict:
    """Greedy completions for the held-out prompts (a rendered dataset: prompt, answer, answer_format),
    graded like the evaluate stage: accuracy, format rate, mean length in tokens, share cut at the cap."""
    from tinyreason.generation import GenerationSettings, generate_completions
    from tinyreason.grading import grade_answer

    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0, seed=seed)
    was_training = model.training
    model.eval()
    try:  # HF generate on the training model (its LoRA as is), the same way on every device
        outputs = generate_completions(model, tokenizer, list(held["prompt"]), settings, batch_size=16,
                                       show_progress=False, use_engine=False)
    finally:
        model.train(was_training)
    grades = [grade_answer(o.text, gold, fmt) for o, gold, fmt in zip(outputs, held["answer"], held["answer_format"])]
    n = len(grades)
    return {"eval_heldout/accuracy": sum(g.correct for g in grades) / n,
            "eval_heldout/format_rate": sum(g.formatted for g in grades) / n,
            "eval_heldout/mean_length": sum(o.num_tokens for o in outputs) / n,
            "eval_heldout/truncated_rate": sum(o.truncated for o in outputs) / n}


class HeldOutMonitor(TrainerCallback):
    """Scores the held-out problems every `eval_steps` and at the end; the scores join the run's log
    history (so they are in checkpoints and replayed on resume) and, on the main process, DVCLive."""

    def __init__(self, held, tokenizer, eval_steps: int, max_new_tokens: int, seed: int, live=None):
        self.held, self.tokenizer, self.eval_steps = held, tokenizer, eval_steps
        self.max_new_tokens, self.seed, self.live = max_new_tokens, seed, live
        self.last: dict = {}

    def _score(self, state, model) -> None:
        from tinyreason.tracking import LiveMetricsCallback

        if any(e.get("step") == state.global_step and "eval_heldout/accuracy" in e for e in state.log_history):
            return  # already scored at this step (the end of a run whose last step was an eval step)
        self.last = score_held_out(model, self.tokenizer, self.held, self.max_new_tokens, self.seed)
        state.log_history.append({**self.last, "step": state.global_step})
        if self.live is not None:
            LiveMetricsCallback(self.live).on_log(None, state, None, logs=self.last)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.eval_steps == 0:
            self._score(state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._score(state, model)


class CompletionSampler(TrainerCallback):
    """Sees every scored batch through the reward functions it wraps (`wrap`); at each logging step the
    main process appends the latest batch's first SAMPLES_PER_LOG completions to completions.jsonl."""

    def __init__(self, live_dir: str | Path | None):
        self.path = Path(live_dir) / COMPLETIONS_FILE if live_dir is not None else None
        self.batch: dict = {}

    def wrap(self, reward_funcs: list) -> list:
        def watched(func):
            def reward(prompts=None, completions=None, **kwargs):
                values = func(prompts=prompts, completions=completions, **kwargs)
                if self.batch.get("completions") is not completions:  # the first function of a new batch
                    self.batch = {"prompts": prompts, "completions": completions, "answers": kwargs.get("answer"),
                                  "rewards": {}}
                self.batch["rewards"][reward.__name__] = values
                return values

            reward.__name__ = reward.__qualname__ = getattr(func, "__name__", type(func).__name__)
            return reward

        return [watched(f) for f in reward_funcs]

    def on_log(self, args, state, control, logs=None, **kwargs):
        from tinyreason.rewards import completion_text

        if self.path is None or not state.is_world_process_zero or not self.batch.get("completions"):
            return
        b, rows = self.batch, []
        for i, completion in enumerate(b["completions"][:SAMPLES_PER_LOG]):
            rows.append({"step": state.global_step, "prompt": completion_text(b["prompts"][i]) if b["prompts"] else None,
                         "completion": completion_text(completion),
                         "answer": b["answers"][i] if isinstance(b["answers"], list) else b["answers"],
                         "rewards": {name: values[i] for name, values in b["rewards"].items()
                                     if values is not None and i < len(values)}})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as out:
            out.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        self.batch = {}
