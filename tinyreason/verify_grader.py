"""`tinyreason verify-grader`: a check of the grader. Each benchmark's own reference solution, written the way a
model is asked to answer, must grade as correct, and graded against another problem's gold must not; any miss
is a grader bug (tests/test_verify_grader.py runs it).

    render_reference_completion(problem) -> str   a benchmark's gold solution written as a model would answer
    verify_grader(benchmark_names, limit=None, string_shortcut=False) -> dict
    add_parser(subparsers)                         registers `tinyreason verify-grader`
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time

from tinyreason.benchmarks import Problem
from tinyreason.formats import CHOICE, FINAL_ANSWER, FINAL_ANSWER_MARKER
from tinyreason.grading import extract_boxed_answer, grade_answer

# Thresholds `tinyreason verify-grader` enforces (fraction of reference solutions graded correct). GSM8K and
# MATH500 are the required bars; the others are regression guards set just below what was measured (all 100 %).
VERIFY_THRESHOLDS = {"gsm8k": 1.0, "math500": 0.99, "aime24": 1.0, "aime25": 1.0, "amc23": 1.0,
                     "minerva_math": 0.99}


def render_reference_completion(problem: Problem) -> str:
    """The gold solution written the way a model is asked to answer.

    GSM8K: the reference reasoning (text before `####`) then `**Final Answer:** <gold>`. Math sets: the
    reference solution when it contains a \\boxed{} answer, else the solution (if any) followed by
    `The answer is \\boxed{<gold>}.` Choice: the explanation (if any) then `**Final Answer:** <letter>`."""
    solution = problem.solution.strip()
    if problem.answer_format == FINAL_ANSWER:
        return f"{solution}\n{FINAL_ANSWER_MARKER} {problem.gold}".lstrip()
    if problem.answer_format == CHOICE:
        return f"{solution}\n\n{FINAL_ANSWER_MARKER} {problem.gold}".lstrip()
    if solution and extract_boxed_answer(solution) is not None and re.search(r"\\boxed\s*\{", solution):
        return solution
    return f"{solution}\n\nThe answer is $\\boxed{{{problem.gold}}}$.".lstrip()


def verify_grader(benchmark_names: list[str] | tuple[str, ...], limit: int | None = None,
                  string_shortcut: bool = False) -> dict:
    """Grade every benchmark's reference solution (see render_reference_completion) with grade_answer.

    The reference's boxed answer is usually the very string stored as gold, which grade_answer accepts by
    string equality before any parsing. That would make this check vacuous, so by default
    (`string_shortcut=False`) the equality shortcut is off and every LaTeX answer goes through the numeric
    parser and math-verify, exactly as a differently-written model answer would.

    Negative control: each reference is also graded against another problem's gold (the problem n/2 further
    on, skipped when both golds are the same string); every such acceptance is listed in `false_accepts`.

    Returns {name: {"n", "correct", "accuracy", "threshold", "passed", "seconds", "failures": [{"id",
    "gold", "extracted", "reason"}], "negatives", "false_accepts": [...]}}. `threshold` is
    VERIFY_THRESHOLDS.get(name) (None: accuracy reported, not enforced); `passed` also needs zero false accepts
    (a pair of different strings that are truly equal, e.g. `0.5` and `\\frac12`, would show up there: inspect)."""
    from tinyreason.benchmarks import get_spec, load_benchmark

    report: dict[str, dict] = {}
    for name in benchmark_names:
        spec = get_spec(name)
        problems = load_benchmark(name, limit=limit)
        start = time.perf_counter()
        failures = []
        for problem in problems:
            completion = render_reference_completion(problem)
            grade = grade_answer(completion, problem.gold, problem.answer_format, spec.numeric_tolerance,
                                 string_shortcut=string_shortcut)
            if grade.correct:
                continue
            if grade.extracted is None:
                reason = "no answer extracted from the reference solution"
            elif not grade.formatted:
                reason = "answer not in the expected format"
            else:
                reason = "extracted answer judged different from gold"
            failures.append({"id": problem.id, "gold": problem.gold, "extracted": grade.extracted, "reason": reason})
        # Negative control: the same reference against another problem's (different) gold must be rejected;
        # a grader that accepts everything would pass the check above.
        false_accepts, negatives = [], 0
        for i, problem in enumerate(problems):
            other = problems[(i + len(problems) // 2) % len(problems)]
            if " ".join(other.gold.split()) == " ".join(problem.gold.split()):
                continue
            negatives += 1
            grade = grade_answer(render_reference_completion(problem), other.gold, problem.answer_format,
                                 spec.numeric_tolerance, string_shortcut=string_shortcut)
            if grade.correct:
                false_accepts.append({"id": problem.id, "gold": other.gold, "extracted": grade.extracted,
                                      "reason": f"accepted against the gold of {other.id}"})
        n = len(problems)
        correct = n - len(failures)
        threshold = VERIFY_THRESHOLDS.get(name)
        report[name] = {
            "n": n, "correct": correct, "accuracy": correct / n, "threshold": threshold,
            "passed": (threshold is None or correct / n >= threshold) and not false_accepts,
            "seconds": round(time.perf_counter() - start, 2), "failures": failures,
            "negatives": negatives, "false_accepts": false_accepts,
        }
    return report


def _run_verify_grader(args: argparse.Namespace) -> int:
    from tinyreason.benchmarks import BENCHMARKS

    names = [n.strip() for n in args.benchmarks.split(",") if n.strip()] if args.benchmarks else \
        [name for name, spec in BENCHMARKS.items() if spec.path is not None]
    report = verify_grader(names, limit=args.limit)
    ok = all(entry["passed"] for entry in report.values())
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0 if ok else 1
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Grader verification: reference solutions graded by tinyreason.grading",
                  caption="min: required accuracy; false acc.: references accepted against another problem's gold")
    for column in ("benchmark", "n", "correct", "accuracy", "min", "false acc.", "status", "s"):
        table.add_column(column, justify="left" if column in ("benchmark", "status") else "right", no_wrap=True)
    for name, entry in report.items():
        threshold = "-" if entry["threshold"] is None else f"{entry['threshold']:.0%}"
        status = "ok" if entry["passed"] else "[red]FAIL[/red]"
        table.add_row(name, str(entry["n"]), str(entry["correct"]), f"{entry['accuracy']:.2%}", threshold,
                      f"{len(entry['false_accepts'])}/{entry['negatives']}", status, f"{entry['seconds']:.1f}")
    console = Console()
    console.print(table)
    for name, entry in report.items():
        for failure in (entry["failures"] + entry["false_accepts"])[: args.show_failures]:
            console.print(f"  {name} {failure['id']}: gold={failure['gold']!r} extracted={failure['extracted']!r}"
                          f" ({failure['reason']})", markup=False, highlight=False)
        hidden = len(entry["failures"]) + len(entry["false_accepts"]) - args.show_failures
        if hidden > 0:
            console.print(f"  {name}: {hidden} more failures (use --json for all)")
    return 0 if ok else 1


def add_parser(subparsers) -> None:
    """Register `tinyreason verify-grader`."""
    parser = subparsers.add_parser(
        "verify-grader", help="grade each benchmark's own reference solutions (a check of the grader)",
        description="Render each benchmark's reference solution the way a model answers and grade it; exits 1 "
                    f"if a benchmark is below its threshold ({', '.join(f'{k} {v:.0%}' for k, v in VERIFY_THRESHOLDS.items())}).")
    parser.add_argument("--benchmarks", default=None,
                        help="comma-separated names (default: every vendored benchmark)")
    parser.add_argument("--limit", type=int, default=None, help="first N problems of each benchmark")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    parser.add_argument("--show-failures", type=int, default=10, help="failures listed per benchmark (table mode)")
    parser.set_defaults(func=_run_verify_grader)


if __name__ == "__main__":  # pragma: no cover - convenience: python -m tinyreason.verify_grader
    _parser = argparse.ArgumentParser(prog="tinyreason")
    add_parser(_parser.add_subparsers(dest="command", required=True))
    _args = _parser.parse_args(["verify-grader", *sys.argv[1:]])
    sys.exit(_args.func(_args))
