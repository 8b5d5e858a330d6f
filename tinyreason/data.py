"""Training data: GSM8K rows -> (question, reasoning, answer) -> seeded subsample and split.

Rows come from a local JSONL file (the vendored copy by default) or, for users online, a hub
dataset id through `datasets`. Malformed rows (not JSON, missing fields, no `####`) are dropped
and counted; an empty result is an error, not an empty training set.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

from tinyreason import benchmarks, sources
from tinyreason.benchmarks import split_gsm8k_answer
from tinyreason.errors import DataError
from tinyreason.formats import CHOICE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReasoningExample:
    question: str
    reasoning: str
    answer: str


def parse_gsm8k_rows(rows, source: str) -> tuple[list[ReasoningExample], int]:
    """Keep well-formed rows; return them and the number dropped."""
    kept, dropped = [], 0
    for row in rows:
        question = row.get("question") if isinstance(row, dict) else None
        answer_field = row.get("answer") if isinstance(row, dict) else None
        parts = split_gsm8k_answer(answer_field) if isinstance(answer_field, str) else None
        if not isinstance(question, str) or not question.strip() or parts is None:
            dropped += 1
            continue
        kept.append(ReasoningExample(question.strip(), *parts))
    if dropped:
        log.warning("%s: dropped %d malformed row(s) (need 'question' and an 'answer' with '####')",
                    source, dropped)
    return kept, dropped


def looks_like_local_path(spec: str) -> bool:
    return spec.endswith((".jsonl", ".json")) or spec.startswith((".", "/")) or Path(spec).exists()


# How to fix a training-data path that names no file (the end of the one-line error).
PREPARE_PATH_FIX = "set prepare.train_path to a JSONL file or a hub dataset id such as openai/gsm8k"
GRPO_PATH_FIX = ("set train.grpo.train_path to a JSONL file, a hub dataset id such as knoveleng/open-rs, "
                 "or null for the prepared GSM8K split")


def local_data_file(spec: str, fix: str) -> Path | None:
    """The local file `spec` names (None for a hub dataset id); a missing file is a one-line
    DataError ending with `fix` (which param to set, to what)."""
    if not looks_like_local_path(spec):
        return None
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"{spec}: data file not found (fix: {fix})")
    return path


def grpo_local_file(cfg) -> Path | None:
    """The local file GRPO trains on (train.grpo.train_path); None for SFT, for the prepared split
    (train_path null) and for a hub dataset id. A missing file is a one-line DataError."""
    g = cfg.train.grpo
    if cfg.train.method != "grpo" or g.train_path is None:
        return None
    return local_data_file(g.train_path, GRPO_PATH_FIX)


def read_training_rows(spec: str, hub_config: str | None, hub_split: str, fix: str,
                       hub_revision: str | None = None) -> tuple[list, int]:
    """Raw rows of a local JSONL file or a hub dataset (at `hub_revision`), and how many local lines were
    not JSON. `fix` completes the one-line error for a missing file (which param to set, to what)."""
    path = local_data_file(spec, fix)
    if path is None:
        return sources.load_hub_rows(spec, hub_config, hub_split, "the training set",
                                     f"check the id and your connection, or {fix}", revision=hub_revision), 0
    rows, bad_json = sources.read_jsonl_counting_malformed(path)
    if bad_json:
        log.warning("%s: %d line(s) are not valid JSON", spec, bad_json)
    return rows, bad_json


def load_gsm8k(spec: str, hub_config: str = "main", hub_split: str = "train",
               hub_revision: str | None = None) -> tuple[list[ReasoningExample], int]:
    """Load GSM8K-style rows from a local JSONL path or a hub dataset id."""
    rows, bad_json = read_training_rows(spec, hub_config, hub_split, PREPARE_PATH_FIX, hub_revision)
    examples, dropped = parse_gsm8k_rows(rows, spec)
    if not examples:
        raise DataError(f"{spec}: no usable rows after dropping {dropped + bad_json} malformed one(s) "
                        "(fix: each line needs JSON with 'question' and 'answer' ending in '#### N')")
    return examples, dropped + bad_json


def subsample_and_split(examples: list, num_samples: int, val_fraction: float, seed: int) -> tuple[list, list]:
    """Seeded subsample of `num_samples` rows, then a seeded train/validation split."""
    rng = random.Random(seed)
    chosen = rng.sample(examples, min(num_samples, len(examples)))
    n_val = max(1, round(len(chosen) * val_fraction))
    if n_val >= len(chosen):
        raise DataError(f"only {len(chosen)} usable example(s): not enough to split off {n_val} for "
                        "validation (fix: add well-formed rows, raise prepare.num_samples or lower "
                        "prepare.val_fraction)")
    return chosen[n_val:], chosen[:n_val]


def build_prepared_splits(cfg, tokenizer) -> tuple[dict[str, list[dict]], dict]:
    """train/val (SFT prompt-completion rows) and test (rendered evaluation prompts), plus a report.

    Raises if a training question is also a test question: test benchmarks must never leak into
    training or checkpoint choice.
    """
    from tinyreason import prompts

    examples, dropped = load_gsm8k(cfg.prepare.train_path, cfg.prepare.hub_config, cfg.prepare.hub_split,
                                   cfg.prepare.hub_revision)
    try:
        train, val = subsample_and_split(examples, cfg.prepare.num_samples, cfg.prepare.val_fraction, cfg.seed)
    except DataError as exc:  # name the file: too few of its rows survived the filtering
        raise DataError(f"{cfg.prepare.train_path}: {exc}") from None
    sft_prompt = cfg.prompt(cfg.prepare.prompt)

    def sft_rows(split):
        return [dict(question=ex.question, answer=ex.answer,
                     **prompts.render_sft_example(tokenizer, sft_prompt, ex.question, ex.reasoning, ex.answer))
                for ex in split]

    test_rows, test_problems = [], []
    for name, run in cfg.evaluate.benchmarks.items():
        prompt = cfg.prompt(run.prompt)
        spec = cfg.evaluate.spec_of(name, prompt.answer_format)
        user_format = spec.question_key is not None  # a user's own set: its answer_format is what grades it
        for problem in benchmarks.load_benchmark(name, path=run.path, limit=run.limit, spec=spec):
            test_problems.append(problem)
            test_rows.append({
                "benchmark": name, "id": problem.id, "question": problem.question, "gold": problem.gold,
                "prompt": prompts.render_generation_prompt(tokenizer, prompt, problem.question),
                "answer_format": problem.answer_format if user_format or problem.answer_format == CHOICE
                else run.answer_format or prompt.answer_format,
                "numeric_tolerance": spec.numeric_tolerance,
            })

    # The one leak check (benchmarks.py): against every vendored benchmark and this run's own test sets.
    benchmarks.check_no_test_overlap(train + val, cfg.prepare.train_path, question=lambda ex: ex.question,
                                     test_keys=benchmarks.benchmark_question_keys(test_problems))
    report = {"source_rows_kept": len(examples), "source_rows_dropped": dropped,
              "train": len(train), "val": len(val), "test": len(test_rows),
              "test_per_benchmark": {n: sum(r["benchmark"] == n for r in test_rows)
                                     for n in cfg.evaluate.benchmarks}}
    return {"train": sft_rows(train), "val": sft_rows(val), "test": test_rows}, report
