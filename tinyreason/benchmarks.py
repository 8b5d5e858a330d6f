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

import difflib
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from tinyreason import sources
from tinyreason.errors import DataError, TinyReasonError
from tinyreason.formats import ANSWER_FORMATS, CHOICE, FINAL_ANSWER  # noqa: F401 - ANSWER_FORMATS re-exported

log = logging.getLogger(__name__)

AnswerFormat = str  # one of formats.ANSWER_FORMATS (spelled out only there)

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
    question_key, answer_key: the row fields of a user's own benchmark (see `user_spec`); None for the
        registered ones, whose loaders know their files' fields.
    """

    name: str
    path: str | None
    answer_format: AnswerFormat
    numeric_tolerance: float | None
    hub_id: str | None
    hub_config: str | None = None
    hub_split: str = "test"
    description: str = ""
    question_key: str | None = None
    answer_key: str | None = None


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        BenchmarkSpec("gsm8k", "data/benchmarks/gsm8k/test.jsonl", FINAL_ANSWER, None,
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
        BenchmarkSpec("addition", "data/benchmarks/addition/test.jsonl", FINAL_ANSWER, None, None, None, "test",
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


def unknown_benchmark_message(name: str) -> str:
    """The fix for a benchmark name that is neither registered nor given a path (one line)."""
    close = difflib.get_close_matches(name, BENCHMARKS, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (f"unknown benchmark (fix: {hint}use one of {', '.join(BENCHMARKS)}, or give your own test set a "
            f"path: {{path: data/{name}.jsonl, prompt: final_answer}})")


def user_spec(name: str, path: str, answer_format: str, question_key: str | None = None,
              answer_key: str | None = None) -> BenchmarkSpec:
    """A user's own test set under its own name: a local JSONL (or hub id) whose rows hold a question and an
    answer. A registered name given a path keeps its registry spec (a local copy of GSM8K is still GSM8K);
    question_key/answer_key (None: `question` and `answer`) name the fields, answer_format how answers are
    graded. The answer may be bare (`72`, `\\frac{1}{2}`, a letter for choice) or GSM8K's `... #### 72`."""
    if name in BENCHMARKS and question_key is None and answer_key is None:
        return BENCHMARKS[name]
    base = BENCHMARKS.get(name)
    return BenchmarkSpec(name=name, path=None, answer_format=answer_format,
                         numeric_tolerance=base.numeric_tolerance if base else None, hub_id=None,
                         description=f"user benchmark {path}", question_key=question_key or "question",
                         answer_key=answer_key or "answer")


# ----------------------------------------------------------------------------------------------------------
# GSM8K answers and the training-vs-test leak check (the one place both are defined)

# GSM8K marks calculator calls as <<48/2=24>>; they are not part of the reasoning a model writes.
_CALCULATOR_ANNOTATION = re.compile(r"<<[^<>]*>>")


def split_gsm8k_answer(answer_field: str) -> tuple[str, str] | None:
    """'steps ... #### 72' -> ('steps ...', '72'); None when there is no `####` or no answer."""
    if "####" not in answer_field:
        return None
    reasoning, _, answer = answer_field.rpartition("####")
    reasoning = _CALCULATOR_ANNOTATION.sub("", reasoning).strip()
    answer = answer.strip().replace(",", "")
    if not reasoning or not answer:
        return None
    return reasoning, answer


def question_key(text: str) -> str:
    """A question as the leak check compares it: case and whitespace do not make a new question."""
    return " ".join(text.lower().split())


def benchmark_question_keys(extra: Iterable[Problem] = ()) -> dict[str, str]:
    """Normalised question -> benchmark, over every vendored benchmark (whole, whatever a run's limit) and
    `extra` (the run's configured test problems: a user's own set, a hub copy). Checking against every
    vendored set, not only the configured slices, means no benchmark a later run evaluates was trained on."""
    keys: dict[str, str] = {}
    for name, spec in BENCHMARKS.items():
        if spec.path and (REPO_ROOT / spec.path).is_file():  # hub-only (GPQA): not a math training source
            for problem in load_benchmark(name):
                keys.setdefault(question_key(problem.question), name)
    for problem in extra:
        keys.setdefault(question_key(problem.question), problem.benchmark)
    return keys


def check_no_test_overlap(rows: list, source: str, question=lambda row: row["question"], drop: bool = False,
                          drop_fix: str = "", test_keys: dict[str, str] | None = None) -> list:
    """Refuse (or, with drop=True, remove) training rows whose question is a test-benchmark question.

    `question(row)` reads a row's question; `test_keys` defaults to `benchmark_question_keys()`. The error names
    the training source, how many leaked, one example and the benchmark it comes from (one line); `drop_fix`
    adds the option to drop them where the caller has one (GRPO's train.grpo.drop_test_overlap)."""
    test_keys = benchmark_question_keys() if test_keys is None else test_keys
    leaked = [(row, test_keys[key]) for row in rows if (key := question_key(question(row))) in test_keys]
    if not leaked:
        return rows
    if not drop:
        row, bench = leaked[0]
        raise DataError(f"{source}: {len(leaked)} training question(s) also appear in the test benchmarks, e.g. "
                        f"{' '.join(question(row).split())[:60]!r} ({bench}) (fix: remove them from the training "
                        f"data{drop_fix}; test sets must not be trained on)")
    log.warning("%s: dropped %d training question(s) that appear in test benchmarks", source, len(leaked))
    leaked_ids = {id(row) for row, _ in leaked}
    return [row for row in rows if id(row) not in leaked_ids]


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
    if spec.question_key is not None:
        return _user_row_to_problem(row, index, spec, where)
    if spec.answer_format == CHOICE:
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
    if spec.answer_format == FINAL_ANSWER:
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


def _user_row_to_problem(row: dict, index: int, spec: BenchmarkSpec, where: str) -> Problem:
    """A row of a user's own benchmark: its question_key and answer_key fields (errors say which key to set)."""
    fields = ", ".join(map(str, row)) or "none"
    for kind, key in (("question", spec.question_key), ("answer", spec.answer_key)):
        value = row.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DataError(f"{where}: no {kind} field {key!r} (fix: set evaluate.benchmarks.{spec.name}."
                            f"{kind}_key to the field that holds it; this row has: {fields})")
    answer = row[spec.answer_key]
    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)
    answer, solution = str(answer).strip(), ""
    if "####" in answer:  # GSM8K style: worked steps, then the answer
        parts = split_gsm8k_answer(answer)
        if parts is None:
            raise DataError(f"{where}: {spec.answer_key!r} has '####' but no reasoning before it or no answer "
                            "after it (fix: write the bare answer, or steps ending with '#### <answer>')")
        solution, answer = parts
    if spec.answer_format == CHOICE and answer.upper() not in GPQA_LETTERS:
        raise DataError(f"{where}: answer {answer!r} is not a letter {'-'.join(GPQA_LETTERS[::3])} (fix: a choice "
                        "benchmark's answer is the letter of the right option, the options written in the question)")
    _, row_id = _first_field(row, _ID_FIELDS)
    return Problem(id=str(row_id) if row_id is not None else f"{spec.name}-{index}",
                   question=str(row[spec.question_key]).strip(),
                   gold=answer.upper() if spec.answer_format == CHOICE else answer,
                   answer_format=spec.answer_format, benchmark=spec.name, solution=solution)


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
                   answer_format=CHOICE, benchmark=spec.name,
                   solution=str(row.get("Explanation") or "").strip())


# ----------------------------------------------------------------------------------------------------------
# Sources: local JSONL or hub

def _looks_like_hub_id(path: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?", path)) and not path.endswith(
        (".jsonl", ".json")) and not Path(path).exists()


def _iter_jsonl(file: Path, limit: int | None):
    for count, (lineno, row) in enumerate(sources.iter_jsonl(file)):
        if limit is not None and count >= limit:
            return
        yield row, count, f"{file}:{lineno}"


def _hub_help(spec: BenchmarkSpec, hub_id: str) -> str:
    if spec.answer_format == CHOICE:
        return (f"GPQA is gated and not vendored (its authors ask that it not be shared in plain text): accept the "
                f"terms at https://huggingface.co/datasets/{hub_id}, run `hf auth login` (or set HF_TOKEN), "
                f"and run online")
    local = f" or use the vendored copy ({spec.path})" if spec.path else ""
    return f"check the network / HF_HUB_OFFLINE and the dataset id{local}"


def _load_hub_rows(spec: BenchmarkSpec, path: str) -> list[dict]:
    hub_id, _, config = path.partition(":")
    config = config or (spec.hub_config if hub_id == spec.hub_id else None)
    split = spec.hub_split if hub_id == spec.hub_id else "test"
    return sources.load_hub_rows(hub_id, config, split, spec.name, _hub_help(spec, hub_id))


def benchmark_source(name: str, path: str | Path | None = None, spec: BenchmarkSpec | None = None) -> str | Path:
    """Where benchmark `name` is read from: a hub dataset id (str) or an existing local file (Path).
    path None: the vendored copy (or the hub, for hub-only sets). A missing local file: one line."""
    spec = get_spec(name) if spec is None else spec
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
                   seed: int = 0, spec: BenchmarkSpec | None = None) -> list[Problem]:
    """Load benchmark `name` as a list of Problems, in file order.

    path: a local .jsonl file (default: the vendored copy from the registry) or a hub dataset id
        ("owner/name" or "owner/name:config"). limit: keep the first `limit` problems (deterministic).
    seed: only used by multiple-choice sets (GPQA) to shuffle the options.
    spec: a user's own benchmark (`user_spec`); None: the registry's spec for `name`.
    Errors (one line, DataError/TinyReasonError): unknown name, missing file, malformed JSON line (with its
    number), a row missing its question/answer, an unreachable or gated hub dataset, an empty benchmark.
    """
    spec = get_spec(name) if spec is None else spec
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise TinyReasonError(f"benchmark limit must be a positive integer or None, got {limit!r}")
    source = benchmark_source(name, path, spec)
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
