"""Grader verification: every benchmark's own reference solution must grade as correct, and must be rejected
against another problem's gold. Full GSM8K test (1319) and MATH500 (500, through math-verify) run here."""

import json

import pytest

from tinyreason import cli, grading
from tinyreason.benchmarks import Problem, load_benchmark
from tinyreason.verify_grader import render_reference_completion, verify_grader


def _assert_clean(entry, n):
    assert entry["n"] == n
    assert entry["false_accepts"] == []
    assert entry["negatives"] >= n - 20  # only pairs with identical gold strings are skipped
    assert entry["passed"] is True


def test_gsm8k_full_test_set_is_graded_100_percent():
    entry = verify_grader(["gsm8k"])["gsm8k"]
    assert entry["failures"] == []
    assert entry["accuracy"] == 1.0
    _assert_clean(entry, 1319)


def test_math500_full_through_math_verify():
    entry = verify_grader(["math500"])["math500"]  # string shortcut off: every answer is parsed
    assert entry["accuracy"] >= 0.99, entry["failures"]
    _assert_clean(entry, 500)


@pytest.mark.slow
@pytest.mark.parametrize("name, n", [("aime24", 30), ("aime25", 30), ("amc23", 40), ("minerva_math", 272)])
def test_other_vendored_benchmarks(name, n):
    entry = verify_grader([name])[name]
    assert entry["failures"] == []
    _assert_clean(entry, n)


def test_render_reference_completion():
    gsm = load_benchmark("gsm8k", limit=1)[0]
    text = render_reference_completion(gsm)
    assert text.startswith("Janet sells 16 - 3 - 4 = 9 duck eggs a day.")
    assert text.endswith("\n**Final Answer:** 18")
    with_box = load_benchmark("math500", limit=1)[0]
    assert render_reference_completion(with_box) == with_box.solution
    no_solution = load_benchmark("aime25", limit=1)[0]
    assert render_reference_completion(no_solution) == "The answer is $\\boxed{70}$."
    framebox_only = Problem("x", "q", "204", "boxed", "aime24", solution="so $\\framebox{204}$ minutes")
    assert render_reference_completion(framebox_only).endswith("The answer is $\\boxed{204}$.")
    choice = Problem("g", "q", "C", "choice", "gpqa_diamond", solution="")
    assert render_reference_completion(choice) == "**Final Answer:** C"


def test_verification_catches_a_broken_normaliser(monkeypatch):
    monkeypatch.setattr(grading, "normalize_numeric_answer", lambda text: text.strip()[:1])
    entry = verify_grader(["gsm8k"], limit=200)["gsm8k"]
    assert entry["passed"] is False
    assert entry["false_accepts"]  # first-digit-only comparison accepts wrong answers


def test_verification_catches_an_accept_everything_grader(monkeypatch):
    monkeypatch.setattr(grading, "_latex_equal", lambda *args, **kwargs: True)
    entry = verify_grader(["aime24"])["aime24"]
    assert entry["accuracy"] == 1.0
    assert len(entry["false_accepts"]) == entry["negatives"] > 0
    assert entry["passed"] is False


def test_verification_reports_failures_with_reason(monkeypatch):
    monkeypatch.setattr(grading, "_latex_equal", lambda *args, **kwargs: False)
    entry = verify_grader(["amc23"], limit=5)["amc23"]
    assert entry["accuracy"] == 0.0 and len(entry["failures"]) == 5
    assert entry["failures"][0] == {"id": "0", "gold": "27", "extracted": "27",
                                    "reason": "extracted answer judged different from gold"}


def test_cli_json_and_exit_codes(capsys, monkeypatch):
    assert cli.main(["verify-grader", "--benchmarks", "gsm8k,aime25", "--limit", "30", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"gsm8k", "aime25"}
    assert report["gsm8k"]["n"] == 30 and report["gsm8k"]["accuracy"] == 1.0

    assert cli.main(["verify-grader", "--benchmarks", "gsm8k", "--limit", "30"]) == 0
    table = capsys.readouterr().out
    assert "gsm8k" in table and "100.00%" in table

    monkeypatch.setattr(grading, "_final_answer_equal", lambda *args, **kwargs: False)
    assert cli.main(["verify-grader", "--benchmarks", "gsm8k", "--limit", "10"]) == 1
    assert "FAIL" in capsys.readouterr().out

    assert cli.main(["verify-grader", "--benchmarks", "gsm8k,nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err


def _rewrites(gold: str) -> set[str]:
    """Equivalent ways a model could write a MATH500 gold answer."""
    import re
    from fractions import Fraction

    out = {
        gold.replace("\\left", "").replace("\\right", ""),
        gold.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac"),
        re.sub(r"\s+", "", gold),
        re.sub(r"\\text\{\s*([^{}]*?)\s*\}", r"\1", gold),
        re.sub(r"\^\\circ", "", gold),
    }
    frac = re.fullmatch(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", gold)
    if frac:
        value = Fraction(int(frac.group(2)), int(frac.group(3)))
        if 10**6 % value.denominator == 0:  # terminating decimal
            out.add(frac.group(1) + str(float(value)))
        out.add(f"{frac.group(1)}{frac.group(2)}/{frac.group(3)}")
    if re.fullmatch(r"-?\d+", gold):
        out.add(f"{gold}.0")
    out.discard(gold)
    return out


def test_math500_equivalent_rewrites_are_accepted():
    """The reference boxes equal the gold strings, so also grade rewritten but equivalent answers."""
    failures, total = [], 0
    for problem in load_benchmark("math500"):
        for variant in _rewrites(problem.gold):
            total += 1
            if not grading.grade_answer(f"so \\boxed{{{variant}}}", problem.gold, "boxed").correct:
                failures.append((problem.id, problem.gold, variant))
    assert total > 300
    assert failures == []
