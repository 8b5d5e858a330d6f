"""Answer extraction, the seed's normalisation and the math-verify wrapper, on the tricky cases."""

import threading
import time

import pytest

from tinyreason import grading
from tinyreason.errors import TinyReasonError
from tinyreason.grading import (
    Grade,
    extract_boxed_answer,
    extract_final_answer,
    grade_answer,
    latex_number,
    normalize_numeric_answer,
)


# ---------------------------------------------------------------------------------------------- extraction

@pytest.mark.parametrize("text, expected", [
    ("She has 5 apples.\n**Final Answer:** 18", "18"),
    ("**Final Answer:** 18\nSome trailing chatter", "18"),
    ("**Final Answer:** 3\nwait, no.\n**Final Answer:** 4", "4"),  # the last one wins
    ("**Final Answer:** **42**", "42"),
    ("**Final Answer:** $\\frac{1}{2}$.", "\\frac{1}{2}"),
    ("**Final Answer:** \\boxed{7}", "7"),
    ("**Final Answer:** $\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}$", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("**Final Answer:**\n\n  12 apples", "12 apples"),  # answer on the next non-empty line
    ("**final answer:** 9", "9"),
    ("**Final Answer**: 9", "9"),
    ("**Final Answer:** `1,000`", "1,000"),
])
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


@pytest.mark.parametrize("text", ["", None, "The answer is 18.", "so the final answer: 18", "**Final Answer:**   \n  \n"])
def test_extract_final_answer_none(text):
    assert extract_final_answer(text) is None


@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{3}.", "3"),
    ("\\boxed{1} then \\boxed{2}", "2"),  # last wins
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not count
    ("\\boxed{x=3} and a truncated \\boxed{12", "x=3"),  # an unclosed box is skipped
    ("\\fbox{5}", "5"),
    ("\\boxed 5", "5"),
])
def test_extract_boxed_answer(text, expected):
    assert extract_boxed_answer(text) == expected


@pytest.mark.parametrize("text", ["", None, "no box here", "\\boxed{}", "\\boxed{unclosed"])
def test_extract_boxed_answer_none(text):
    assert extract_boxed_answer(text) is None


# ---------------------------------------------------------------------------------------------- normalisation

@pytest.mark.parametrize("raw, expected", [
    ("$1,000.00", "1000"),
    ("1,000", "1000"),
    ("\\$18", "18"),
    ("ten", "10"),
    ("Zero", "0"),
    ("5 dollars", "5"),
    ("12 cm.", "12"),
    ("18 apples", "18"),
    ("3 square feet", "3"),
    ("25%", "25"),
    ("25\\%", "25"),
    ("7.", "7"),
    ("8.0", "8"),
    ("-3.00", "-3"),
    ("2.50", "2.50"),  # only an all-zero fraction is dropped; numeric comparison does the rest
    ("x = 5", "5"),
    ("\\text{5 hours}", "5"),
    ("\\frac{3}{4}", "3/4"),
    ("−4", "-4"),  # unicode minus
    ("Evelyn", "evelyn"),
    ("The answer is 18.", "18"),
    ("She makes 18 dollars per day", "18"),
    ("Total: $1,250.", "1250"),
    ("18 (dollars)", "18"),
    ("negative 5", "-5"),
    ("18 and 20", "18 and 20"),  # two numbers: left alone, so it cannot match either
    ("x^2", "x^2"),
])
def test_normalize_numeric_answer(raw, expected):
    assert normalize_numeric_answer(raw) == expected


@pytest.mark.parametrize("raw, value", [
    ("\\textbf{(073)}", 73), ("90^\\circ", 90), ("-\\dfrac{1}{2}", -0.5), ("4.5e33", 4.5e33),
    ("4.5 \\times 10^{33}", 4.5e33), ("1,000", 1000), ("12 \\text{ cm}", 12), ("-1./3", -1 / 3),
])
def test_latex_number(raw, value):
    assert float(latex_number(raw)) == pytest.approx(value)


@pytest.mark.parametrize("raw", ["x", "\\sqrt{2}", "(3,4)", "1e999999", "1,2", "2x"])
def test_latex_number_rejects_non_numbers(raw):
    assert latex_number(raw) is None


# ---------------------------------------------------------------------------------------------- final_answer

@pytest.mark.parametrize("answer, gold, correct", [
    ("$1,000.00", "1000", True),
    ("ten", "10", True),
    ("18 dollars", "18", True),
    ("0.5", "1/2", True),
    ("\\frac{1}{2}", "0.5", True),
    ("1000.5", "1000", False),
    ("17", "18", False),
    ("-5", "5", False),
    ("100%", "100", True),
    ("eighteen", "18", True),  # number words zero..ninety-nine are mapped
    ("eighteen", "19", False),
])
def test_grade_final_answer(answer, gold, correct):
    grade = grade_answer(f"Some reasoning.\n**Final Answer:** {answer}", gold, "final_answer")
    assert grade.correct is correct
    assert grade.formatted is True
    assert grade.extracted == answer


def test_final_answer_last_wins():
    text = "**Final Answer:** 17\nHmm, I made an error.\n**Final Answer:** 18"
    assert grade_answer(text, "18", "final_answer") == Grade("18", True, True)
    assert grade_answer(text, "17", "final_answer").correct is False


def test_final_answer_no_answer():
    assert grade_answer("I think it is 18 but I am not sure.", "18", "final_answer") == Grade(None, False, False)
    assert grade_answer("", "18", "final_answer") == Grade(None, False, False)


def test_final_answer_falls_back_to_boxed_but_not_formatted():
    grade = grade_answer("so the answer is \\boxed{18}", "18", "final_answer")
    assert grade == Grade("18", True, False)


def test_final_answer_tolerance():
    assert grade_answer("**Final Answer:** 101", "100", "final_answer", numeric_tolerance=0.02).correct
    assert not grade_answer("**Final Answer:** 103", "100", "final_answer", numeric_tolerance=0.02).correct


def test_final_answer_with_latex_gold_uses_math_verify():
    # a math benchmark evaluated with the Final Answer prompt
    assert grade_answer("**Final Answer:** $(0, 1]$", "(0,1]", "final_answer").correct
    assert not grade_answer("**Final Answer:** $[0, 1]$", "(0,1]", "final_answer").correct


# ---------------------------------------------------------------------------------------------- boxed (math-verify)

@pytest.mark.parametrize("pred, gold, correct", [
    ("\\frac{1}{2}", "0.5", True),
    ("0.5", "\\frac{1}{2}", True),
    ("\\dfrac{14}{3}", "\\frac{14}{3}", True),
    ("x=3", "3", True),
    ("90^\\circ", "90", True),
    ("90", "90^\\circ", True),
    ("(0,1]", "(0,1]", True),
    ("[0,1]", "(0,1]", False),
    ("(0,1)", "(0,1]", False),
    ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("(3, \\pi)", "\\left( 3, \\frac{\\pi}{2} \\right)", False),
    ("\\text{Evelyn}", "\\text{Evelyn}", True),
    ("Evelyn", "\\text{Evelyn}", True),
    ("\\text{Bob}", "\\text{Evelyn}", False),
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("\\sqrt{8}", "3", False),
    ("\\$1,000.00", "1000", True),
    ("1000", "1000.5", False),
    ("3, 2", "2, 3", True),  # unordered list of solutions
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}", False),
])
def test_grade_boxed(pred, gold, correct):
    grade = grade_answer(f"Work... so the answer is $\\boxed{{{pred}}}$.", gold, "boxed")
    assert grade.correct is correct, (pred, gold)
    assert grade.formatted is True
    assert grade.extracted == pred


def test_boxed_no_answer_and_last_box_wins():
    assert grade_answer("no box, the answer is 3", "3", "boxed") == Grade(None, False, False)
    text = "First \\boxed{2}, but correcting myself: \\boxed{3}"
    assert grade_answer(text, "3", "boxed").correct
    assert not grade_answer(text, "2", "boxed").correct


def test_boxed_falls_back_to_final_answer_but_not_formatted():
    assert grade_answer("**Final Answer:** $\\frac{1}{2}$", "0.5", "boxed") == Grade("\\frac{1}{2}", True, False)


def test_minerva_relative_tolerance():
    tol = 1e-2
    assert grade_answer("\\boxed{4.52 \\times 10^{33}}", "4.5e33", "boxed", tol).correct  # 0.4 % off
    assert not grade_answer("\\boxed{4.8 \\times 10^{33}}", "4.5e33", "boxed", tol).correct  # 6.7 % off
    assert not grade_answer("\\boxed{4.5 \\times 10^{32}}", "4.5e33", "boxed", tol).correct
    assert grade_answer("\\boxed{1.414}", "\\sqrt{2}", "boxed", tol).correct  # symbolic gold, numeric answer
    assert not grade_answer("\\boxed{1.5}", "\\sqrt{2}", "boxed", tol).correct
    assert grade_answer("\\boxed{\\arcsin(10/13)}", "np.arcsin(10/13)", "boxed", tol).correct  # python gold
    # without a tolerance the same 0.4 % gap is wrong
    assert not grade_answer("\\boxed{4.52 \\times 10^{33}}", "4.5e33", "boxed").correct


def test_pathological_answers_never_hang_or_raise(monkeypatch):
    monkeypatch.setattr(grading, "TIMEOUT_SECONDS", 1)
    start = time.perf_counter()
    for pred in ["9^{9^{9^{9}}}", "(10^{100})!", "\\frac{1}{0}", "{" * 300 + "}" * 300, "x" * 5000,
                 "\\boxed{\\boxed{", "1e99999999999"]:
        grade = grade_answer(f"\\boxed{{{pred}}}", "3", "boxed")
        assert grade.correct is False
    # each math-verify step is bounded by the 1 s alarm; the long input is refused before sympy sees it
    assert time.perf_counter() - start < 30


def test_math_verify_does_not_cancel_an_outer_alarm():
    """math-verify's signal.alarm(0) would silently cancel a caller's timer (e.g. pytest-timeout)."""
    import signal

    previous = signal.signal(signal.SIGALRM, lambda *_: None)
    try:
        signal.setitimer(signal.ITIMER_REAL, 100.0)
        assert grade_answer("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", "boxed").correct
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 90.0 < remaining <= 100.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_grading_off_the_main_thread_uses_a_subprocess():
    """signal.alarm only works in the main thread: elsewhere the comparison runs in a worker process."""
    results = {}

    def work():
        results["ok"] = grade_answer("\\boxed{\\frac{1}{2}}", "0.5", "boxed").correct
        results["bad"] = grade_answer("\\boxed{\\sqrt{2}}", "0.5", "boxed").correct

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=120)
    assert results == {"ok": True, "bad": False}


# ---------------------------------------------------------------------------------------------- choice

@pytest.mark.parametrize("completion, extracted, correct, formatted", [
    ("**Final Answer:** B", "B", True, True),
    ("**Final Answer:** (B)", "B", True, True),
    ("**Final Answer:** B) 42 kJ", "B", True, True),
    ("\\boxed{B}", "B", True, True),
    ("\\boxed{\\text{C}}", "C", False, True),
    ("I am fairly sure the answer is (B).", "B", True, False),
    ("No idea.", None, False, False),
])
def test_grade_choice(completion, extracted, correct, formatted):
    assert grade_answer(completion, "B", "choice") == Grade(extracted, correct, formatted)


def test_unknown_answer_format():
    with pytest.raises(TinyReasonError, match="answer_format"):
        grade_answer("x", "1", "essay")


# ---------------------------------------------------------------------------- real model outputs
# Real model outputs the grader got wrong. Each case is graded through grade_answer, as evaluation does.

@pytest.mark.parametrize("completion", [
    "**Final Answer:** not 12",        # a negation is not the number
    "**Final Answer:** 12 or thirteen",  # a hedge between two answers
    "**Final Answer:** 12 or 13",
    "**Final Answer:** 1,2",            # a comma separates thousands only before a group of three digits
    "**Final Answer:** 12,0",
    "**Final Answer:** one hundred",    # not read as 1 (larger numbers in words are not parsed)
    "**Final Answer:** 12 hundred",
])
def test_wrong_answers_accepted_before_are_rejected(completion):
    gold = "1" if "hundred" in completion else "12"
    grade = grade_answer(completion, gold, "final_answer")
    assert grade.formatted is True and grade.correct is False


@pytest.mark.parametrize("completion, gold", [
    ("**Final Answer: 12**", "12"),       # bold closed after the number
    ("**Final Answer: $12$.**", "12"),
    ("**Final Answer:** 12<|im_end|>", "12"),  # special tokens left by the decoder
    ("**Final Answer:** 12</s>", "12"),
    ("**Final Answer:** 12 <|endoftext|>", "12"),
    ("**Final Answer:** 12<|im_end|>\nassistant", "12"),
    ("**Final Answer:** 1 000", "1000"),  # space / thin space / no-break space thousands separators
    ("**Final Answer:** 1\u2009000\u2009000", "1000000"),
    ("**Final Answer:** 1\u00a0000", "1000"),
    ("**Final Answer:** 1,000,000", "1000000"),
    ("**Final Answer:** 18 cm^2", "18"),  # units with an exponent after the number
    ("**Final Answer:** 18 \\text{cm}^2", "18"),
    ("**Final Answer:** 5 m^{3}", "5"),
])
def test_right_answers_rejected_before_are_accepted(completion, gold):
    assert grade_answer(completion, gold, "final_answer") == Grade(grade_answer(completion, gold, "final_answer")
                                                                   .extracted, True, True)


def test_plain_final_answer_line_is_graded_and_formatted():
    # Decision: the marker is the format, the bold is markdown; a plain marker must start a line.
    assert grade_answer("Adding them up.\nFinal Answer: 12", "12", "final_answer") == Grade("12", True, True)
    assert grade_answer("### Final answer: 12", "12", "final_answer") == Grade("12", True, True)
    assert grade_answer("we now reach the final answer: 12", "12", "final_answer") == Grade(None, False, False)


@pytest.mark.parametrize("answer, gold", [("twelve", "12"), ("Twenty-one", "21"), ("ninety nine", "99"),
                                          ("seventeen apples", "17"), ("negative eleven", "-11")])
def test_number_words_past_ten(answer, gold):
    assert grade_answer(f"**Final Answer:** {answer}", gold, "final_answer").correct is True
    wrong = str(int(gold) + 1)
    assert grade_answer(f"**Final Answer:** {answer}", wrong, "final_answer").correct is False


def test_answer_only_inside_think_is_not_graded():
    # Decision: an answer weighed inside the reasoning is not the answer given.
    closed = "<think>\nmaybe **Final Answer:** 12 ... or \\boxed{12}\n</think>\nI am not sure."
    assert grade_answer(closed, "12", "final_answer") == Grade(None, False, False)
    assert grade_answer(closed, "12", "boxed") == Grade(None, False, False)
    never_closed = "<think>\nso **Final Answer:** 12"
    assert grade_answer(never_closed, "12", "final_answer") == Grade(None, False, False)
    # After the block closes, the answer is graded; so is an output without think tags at all (the prompt
    # may have opened the block, e.g. the `<think>\n` prefix of the shipped prompts).
    assert grade_answer("reasoning with 11\n</think>\n**Final Answer:** 12", "12", "final_answer").correct
    assert grade_answer("reasoning, 11\n</think>\n**Final Answer:** 11", "12", "final_answer").correct is False
    assert grade_answer("reasoning\n**Final Answer:** 12", "12", "final_answer").correct
    assert grading.extract_answer(never_closed) is None


def test_boxed_benchmark_fallback_is_counted_and_reported():
    # Decision: the other explicit answer form counts as correct but not formatted; evaluation reports it
    # as correct_unformatted so a score that comes only from the fallback is visible.
    from tinyreason.evaluation import summarise

    fallback = grade_answer("The answer follows.\n**Final Answer:** 12", "12", "boxed")
    assert fallback == Grade("12", True, False)
    assert grade_answer("random tokens 12 lorem 12", "12", "boxed") == Grade(None, False, False)
    records = [{"sample": 0, "correct": g.correct, "formatted": g.formatted, "truncated": False, "num_tokens": 5}
               for g in (fallback, grade_answer("\\boxed{12}", "12", "boxed"), grade_answer("x", "12", "boxed"))]
    summary = summarise(records, 1)
    assert summary["correct"] == 2 and summary["correct_unformatted"] == 1
    assert summary["format_rate"] == pytest.approx(1 / 3)
