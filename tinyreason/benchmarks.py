"""Evaluation benchmarks: a registry of specs and loaders that turn each file's own fields into `Problem`s.

Public API:
    BenchmarkSpec, BENCHMARKS            the registry (name -> spec); `benchmark_names()` lists it
    Problem                              one benchmark item (id, question, gold, answer_format, ...)
    load_benchmark(name, path=None, limit=None, seed=0) -> list[Problem]

Data: every benchmark except GPQA-Diamond is vendored under data/benchmarks/<name>/ (LICENSE and SOURCE.md
next to it). A `path` may also be a Hugging Face Hub dataset id ("owner/name" or "owner/name:config"),
loaded with `datasets.load_dataset`; that needs network (and, for gated sets, a login).

GPQA-Diamond is never vendored: its authors ask that the questions not be shared in plain text. It is read
from the gated hub dataset `Idavidrein/gpqa` (config `gpqa_diamond`), or from a local .jsonl with the same
fields that a user who accepted the terms exported for themselves. The four options are shuffled with a
`random.Random` seeded from (seed, question index), so the letter of the correct answer is fixed for a given
seed and does not depend on `limit`.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal

from tinyreason.data import split_gsm8k_answer
from tinyreason.errors import DataError, TinyReasonError

AnswerFormat = Literal["final_answer", "boxed", "choice"]
ANSWER_FORMATS: tuple[str, ...] = ("final_answer", "boxed", "choice")

# data/benchmarks/... paths in the registry are relative to the repository root (the parent of the package).
REPO_ROOT = Path(__file__).resolve().parent.parent

# Relative tolerance for Minerva (OCW) numeric answers. Gold values there are physics/chemistry quantities
# given to 2-3 significant figures ("4.5e33", "0.006") and the problems often say "to two significant
# figures"; a correct derivation that uses slightly different constants (sigma = 5.67e-5 vs 5.7e-5: 0.5 %)
# or keeps one more digit must pass, while a wrong formula is off by far more than 1 %. 1e-2 accepts the
# first and rejects the second; Qwen2.5-Math's 1e-4 rejects correct answers written with more digits
# than the gold (4.52e33 vs 4.5e33), and a looser 5 % begins to accept genuinely different numbers.
MINERVA_REL_TOLERANCE = 1e-2

GPQA_HUB_ID = "Idavidrein/gpqa"
GPQA_CONFIG = "gpqa_diamond"
GPQA_LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class BenchmarkSpec:
    """How to find and grade one benchmark.

    path: default local file, relative to the repository root (None: hub only, e.g. GPQA).
    answer_format: "final_answer" (`**Final Answer:** N`, GSM8K), "boxed" (`\\boxed{}`, math sets) or
        "choice" (a letter, GPQA).
    numeric_tolerance: relative tolerance for numeric answers (None: exact / math-verify's own rounding).
    hub_id, hub_config, hub_split: where the same data lives on the Hugging Face Hub.
    """

    name: str
    path: str | None
    answer_format: AnswerFormat
    numeric_tolerance: float | None
    hub_id: str | None
    hub_config: str | None = None
    hub_split: str = "test"
    description: str = ""


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        BenchmarkSpec("gsm8k", "data/benchmarks/gsm8k/test.jsonl", "final_answer", None,
                      "openai/gsm8k", "main", "test", "GSM8K test, 1319 grade-school word problems"),
        BenchmarkSpec("math500", "data/benchmarks/math500/test.jsonl", "boxed", None,
                      "HuggingFaceH4/MATH-500", None, "test", "MATH-500 (PRM800K test split), LaTeX answers"),
        BenchmarkSpec("aime24", "data/benchmarks/aime24/test.jsonl", "boxed", None,
                      "HuggingFaceH4/aime_2024", None, "train", "AIME 2024 I+II, 30 integer answers"),
        BenchmarkSpec("aime25", "data/benchmarks/aime25/test.jsonl", "boxed", None,
                      "MathArena/aime_2025", None, "train", "AIME 2025 I+II, 30 integer answers"),
        BenchmarkSpec("amc23", "data/benchmarks/amc23/test.jsonl", "boxed", None,
                      "math-ai/amc23", None, "test", "AMC 12 2023, 40 problems with numeric answers"),
        BenchmarkSpec("minerva_math", "data/benchmarks/minerva_math/test.jsonl", "boxed", MINERVA_REL_TOLERANCE,
                      "math-ai/minervamath", None, "test", "Minerva OCW courses, 272 science problems"),
        BenchmarkSpec("gpqa_diamond", None, "choice", None, GPQA_HUB_ID, GPQA_CONFIG, "train",
                      "GPQA-Diamond, 198 multiple-choice science questions (gated, not vendored)"),
        # The CPU profile's learning task (tinyreason/addition.py): held-out problems of what it trains on.
        BenchmarkSpec("addition", "data/benchmarks/addition/test.jsonl", "final_answer", None, None, None, "test",
                      "single-digit addition, 32 held-out problems (generated; the CPU profile's task)"),
    )
}


@dataclass(frozen=True)
class Problem:
    """One benchmark item. `gold` is the answer string the grader compares against (GSM8K: the number after
    `####` without thousands separators; math sets: the LaTeX answer; GPQA: the letter). `solution` is the
    reference reasoning when the benchmark has one, else ""."""

    id: str
    question: str
    gold: str
    answer_format: AnswerFormat
    benchmark: str
    solution: str = ""


def benchmark_names() -> list[str]:
    return list(BENCHMARKS)


def get_spec(name: str) -> BenchmarkSpec:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise TinyReasonError(
            f"unknown benchmark {name!r}; known benchmarks: {', '.join(BENCHMARKS)}") from None


# ----------------------------------------------------------------------------------------------------------
# Row -> Problem

_QUESTION_FIELDS = ("problem", "question", "Question")
_ID_FIELDS = ("id", "unique_id", "problem_idx", "Record ID")


def _first_field(row: dict, fields: Iterable[str]) -> tuple[str | None, Any]:
    for field in fields:
        if field in row and row[field] is not None:
            return field, row[field]
    return None, None


def _row_to_problem(row: dict, index: int, spec: BenchmarkSpec, where: str, seed: int) -> Problem:
    """Map one raw row to a Problem; `where` names the file and line (or hub row) for error messages."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if spec.answer_format == "choice":
        return _gpqa_row_to_problem(row, index, spec, where, seed)

    q_field, question = _first_field(row, _QUESTION_FIELDS)
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: missing or empty question field (one of {', '.join(_QUESTION_FIELDS)})")
    answer = row.get("answer")
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        raise DataError(f"{where}: missing or empty 'answer' field")
    answer = str(answer).strip()
    if isinstance(row.get("answer"), float) and float(answer).is_integer():  # hub copies store 27.0
        answer = str(int(float(answer)))

    solution = row.get("solution") or ""
    if spec.answer_format == "final_answer":
        parts = split_gsm8k_answer(answer)
        if parts is None:
            raise DataError(f"{where}: 'answer' has no reasoning and '#### <number>' line (fix: GSM8K "
                            "answers are worked steps ending with a line '#### <number>')")
        solution, gold = parts
    else:
        gold = answer
    _, row_id = _first_field(row, _ID_FIELDS)
    problem_id = str(row_id) if row_id is not None else f"{spec.name}-{index}"
    return Problem(id=problem_id, question=question.strip(), gold=gold, answer_format=spec.answer_format,
                   benchmark=spec.name, solution=str(solution).strip())


def shuffle_choices(correct: str, incorrect: list[str], seed: int, index: int) -> tuple[list[str], str]:
    """Shuffle [correct, *incorrect] with a RNG seeded from (seed, index); returns (options, gold letter).

    Seeding with an int (not hash() of a str) keeps the order identical across processes and Python
    versions; `index` is the question's position in the full dataset, so `limit` never changes it."""
    options = [correct, *incorrect]
    rng = random.Random(seed * 1_000_003 + index)
    order = list(range(len(options)))
    rng.shuffle(order)
    shuffled = [options[i] for i in order]
    return shuffled, GPQA_LETTERS[order.index(0)]


def render_choice_question(question: str, options: list[str]) -> str:
    lines = [question.strip(), ""]
    lines += [f"{letter}) {option}" for letter, option in zip(GPQA_LETTERS, options)]
    return "\n".join(lines)


def _gpqa_row_to_problem(row: dict, index: int, spec: BenchmarkSpec, where: str, seed: int) -> Problem:
    fields = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
    values = []
    for field in fields:
        value = row.get(field)
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: missing or empty GPQA field {field!r} (expected fields: {', '.join(fields)})")
        values.append(value.strip())
    question, correct, *incorrect = values
    options, gold = shuffle_choices(correct, incorrect, seed, index)
    _, row_id = _first_field(row, _ID_FIELDS)
    problem_id = str(row_id) if row_id is not None else f"{spec.name}-{index}"
    return Problem(id=problem_id, question=render_choice_question(question, options), gold=gold,
                   answer_format="choice", benchmark=spec.name,
                   solution=str(row.get("Explanation") or "").strip())


# ----------------------------------------------------------------------------------------------------------
# Sources: local JSONL or hub

def _looks_like_hub_id(path: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?", path)) and not path.endswith(
        (".jsonl", ".json")) and not Path(path).exists()


def _iter_jsonl(file: Path, limit: int | None):
    with file.open(encoding="utf-8") as handle:
        count = 0
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{file}:{lineno}: malformed JSON ({exc.msg}); fix or delete that line") from None
            yield row, count, f"{file}:{lineno}"
            count += 1
            if limit is not None and count >= limit:
                return


def _hub_help(spec: BenchmarkSpec, hub_id: str) -> str:
    if spec.answer_format == "choice":
        return (f"GPQA is gated and not vendored (its authors ask that it not be shared in plain text): accept the "
                f"terms at https://huggingface.co/datasets/{hub_id}, run `huggingface-cli login` (or set HF_TOKEN), "
                f"and run online")
    local = f" or use the vendored copy ({spec.path})" if spec.path else ""
    return f"check the network / HF_HUB_OFFLINE and the dataset id{local}"


def _load_hub_rows(spec: BenchmarkSpec, path: str) -> list[dict]:
    hub_id, _, config = path.partition(":")
    config = config or (spec.hub_config if hub_id == spec.hub_id else None)
    split = spec.hub_split if hub_id == spec.hub_id else "test"
    try:
        import datasets  # heavy import: only when a hub id is asked for

        dataset = datasets.load_dataset(hub_id, config, split=split)
    except Exception as exc:  # network, auth (gated), missing dataset/config/split: all end here
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise DataError(f"cannot load {spec.name} from the Hugging Face Hub ({hub_id}"
                        f"{', ' + config if config else ''}, split {split}): {type(exc).__name__}: {reason}; "
                        f"{_hub_help(spec, hub_id)}") from None
    return [dict(row) for row in dataset]


def benchmark_source(name: str, path: str | Path | None = None) -> str | Path:
    """Where benchmark `name` is read from: a hub dataset id (str) or an existing local file (Path).
    path None: the vendored copy (or the hub, for hub-only sets). A missing local file: one line."""
    spec = get_spec(name)
    if path is None:
        if spec.path is None:
            return f"{spec.hub_id}:{spec.hub_config}" if spec.hub_config else spec.hub_id
        path = REPO_ROOT / spec.path
    if isinstance(path, str) and _looks_like_hub_id(path):
        return path
    file = Path(path)
    if not file.is_file():
        raise DataError(f"benchmark file {file} not found (fix: pass an existing .jsonl path or a hub dataset id"
                        + (f"; vendored copy: {spec.path})" if spec.path else ")"))
    return file


def load_benchmark(name: str, path: str | Path | None = None, limit: int | None = None,
                   seed: int = 0) -> list[Problem]:
    """Load benchmark `name` as a list of Problems, in file order.

    path: a local .jsonl file (default: the vendored copy from the registry) or a hub dataset id
        ("owner/name" or "owner/name:config"). limit: keep the first `limit` problems (deterministic).
    seed: only used by multiple-choice sets (GPQA) to shuffle the options.
    Errors (one line, DataError/TinyReasonError): unknown name, missing file, malformed JSON line (with its
    number), a row missing its question/answer, an unreachable or gated hub dataset, an empty benchmark.
    """
    spec = get_spec(name)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise TinyReasonError(f"benchmark limit must be a positive integer or None, got {limit!r}")
    source = benchmark_source(name, path)
    path_str = str(source)

    problems: list[Problem] = []
    if isinstance(source, str):
        rows = _load_hub_rows(spec, path_str)
        for index, row in enumerate(rows[:limit] if limit else rows):
            problems.append(_row_to_problem(row, index, spec, f"{path_str} row {index}", seed))
    else:
        for row, index, where in _iter_jsonl(source, limit):
            problems.append(_row_to_problem(row, index, spec, where, seed))
    if not problems:
        raise DataError(f"benchmark {name!r} at {path_str} has no problems")
    return problems
