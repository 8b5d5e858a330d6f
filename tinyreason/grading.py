"""Answer extraction and grading: the seed's GSM8K normalisation, a math-verify wrapper for LaTeX answers and
letters for multiple choice (tinyreason/verify_grader.py checks it on every benchmark's reference solutions).

Public API:
    Grade(extracted, correct, formatted)
    extract_final_answer(text) -> str | None       text after the LAST `**Final Answer:**` (first line)
    strip_special_tokens(text), answer_region(completion)   what grading reads of a completion
    extract_boxed_answer(text) -> str | None       content of the last complete `\\boxed{...}`
    extract_choice(text) -> str | None             a letter A-D from an extracted answer
    normalize_numeric_answer(text) -> str          the seed's normalisation for GSM8K-style answers
    latex_number(text) -> Fraction | None          exact value of a LaTeX answer that is just a number
    grade_answer(completion, gold, answer_format, numeric_tolerance=None) -> Grade

Extraction rules. Each format has an expected answer form (`formatted=True` when the completion used it):
final_answer -> `**Final Answer:** N` (also `**Final Answer: N**` and a plain `Final Answer: N` starting a
line), boxed -> `\\boxed{...}`, choice -> either of them holding a letter. When the expected form is absent,
the other form is tried as a fallback, so `correct` measures the answer and `formatted` measures format
compliance separately (evaluation reports fallback-only successes as `correct_unformatted`). No answer at
all -> Grade(None, False, False). Before extraction, tokenizer special tokens are dropped and the think rule
applies (`answer_region`): only the text after the last `</think>` is graded, and a `<think>` never closed
gives no answer.

Comparison: final_answer -> seed normalisation + exact numbers (Fraction), boxed -> identical strings, then
exact numbers (`latex_number`), then math-verify (`parse` of `$gold$` / `\\boxed{pred}`, `verify`); with a
relative `numeric_tolerance` (Minerva) numbers and sympy values are compared with math.isclose.

Safety: math-verify guards parsing and comparison with SIGALRM timeouts (TIMEOUT_SECONDS each); a caller's own
ITIMER_REAL timer is re-armed afterwards. Those alarms only work in the main thread; in any other thread the
comparison runs in a one-worker (spawned) subprocess with a wall-clock deadline instead. Any exception or
timeout counts as incorrect, so grading never raises (except for an unknown answer_format) or hangs.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from fractions import Fraction

from tinyreason.errors import TinyReasonError
from tinyreason.formats import ANSWER_FORMATS, BOXED, CHOICE, FINAL_ANSWER, THINK_CLOSE, THINK_OPEN

logger = logging.getLogger(__name__)

# Per math-verify call (parse of gold, parse of prediction, verify). math-verify's own default is 5 s; every
# MATH500/Minerva reference answer grades in well under 0.5 s, so 5 s only ever trips on pathological input.
TIMEOUT_SECONDS = 5
# Answers longer than this are not handed to sympy at all (a model rambling inside \boxed{}): incorrect.
MAX_ANSWER_CHARS = 1000

@dataclass(frozen=True)
class Grade:
    extracted: str | None  # the answer text taken from the completion (None: nothing found)
    correct: bool
    formatted: bool  # the completion used the answer format expected for this benchmark


# ----------------------------------------------------------------------------------------------------------
# Extraction

# `**Final Answer:**`, `**Final Answer**:`, `**Final Answer: 12**` (bold closed after the answer: group `open`),
# and a plain `Final Answer:` at the start of a line (the `plain` group; mid-sentence "final answer:" is prose).
_FINAL_ANSWER_RE = re.compile(
    r"\*\*\s*final\s+answer\s*(?::\s*\*\*|\*\*\s*:?)\s*:?"
    r"|(?P<open>\*\*\s*final\s+answer\s*:)"
    r"|(?P<plain>^[ \t>#]*final\s+answer\s*:)", re.IGNORECASE | re.MULTILINE)
# Special tokens a decoder may leave in the text (`12<|im_end|>`, `12</s>`): never part of an answer.
_SPECIAL_TOKEN_RE = re.compile(r"<\|[A-Za-z0-9_]+\|>|</s>|<s>|<eos>|<pad>|<end_of_turn>|<\|eot_id\|>")
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOXED_SPACE_RE = re.compile(r"\\boxed +([^\s$}{]+)")


def _balanced(text: str, open_index: int) -> int | None:
    """Index of the `}` that closes the `{` at open_index (None if unbalanced)."""
    depth = 0
    i = open_index
    while i < len(text):
        ch = text[i]
        if ch == "\\":  # skip escaped characters such as \{ and \}
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def extract_boxed_answer(text: str | None) -> str | None:
    """Content of the last complete `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed 5`), braces balanced.

    A box left open at the end (truncated generation) is skipped in favour of the previous complete one.
    Returns None when there is none or it is empty."""
    if not text:
        return None
    candidates: list[tuple[int, str]] = []
    for match in _BOXED_RE.finditer(text):
        close = _balanced(text, match.end() - 1)
        if close is not None:
            candidates.append((match.start(), text[match.end():close]))
    for match in _BOXED_SPACE_RE.finditer(text):
        candidates.append((match.start(), match.group(1)))
    if not candidates:
        return None
    content = max(candidates)[1].strip()
    return content or None


_WRAPPERS = (("**", "**"), ("__", "__"), ("*", "*"), ("`", "`"), ("$$", "$$"), ("$", "$"),
             ("\\(", "\\)"), ("\\[", "\\]"))


def _strip_wrappers(text: str) -> str:
    """Remove markdown/math wrappers around a one-line answer: **x**, `x`, $x$, \\(x\\), \\boxed{x}, 'x.'"""
    s = text.strip()
    while True:
        before = s
        if len(s) > 1 and s.endswith(".") and s[-2] in "$*}`)]":
            s = s[:-1].rstrip()
        for left, right in _WRAPPERS:
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left):len(s) - len(right)].strip()
        match = re.fullmatch(r"\\(?:boxed|fbox)\s*\{(.*)\}", s, re.S)
        if match and _balanced(s, s.index("{")) == len(s) - 1:
            s = match.group(1).strip()
        if s == before:
            return s


def extract_final_answer(text: str | None) -> str | None:
    """The answer after the LAST `**Final Answer:**` (case-insensitive). Also accepted: `**Final Answer**:`,
    `**Final Answer: 12**` (bold closed after the answer) and a plain `Final Answer:` starting a line.

    Takes the first non-empty line after the marker, strips markdown/math wrappers and a \\boxed{} around it.
    A \\boxed{...} that starts right after the marker is taken whole even if it spans lines."""
    if not text:
        return None
    text = strip_special_tokens(text)
    matches = list(_FINAL_ANSWER_RE.finditer(text))
    if not matches:
        return None
    bold_open = matches[-1].group("open") is not None
    rest = text[matches[-1].end():].lstrip()
    boxed_start = re.match(r"(?:\$\$?|\\\(|\\\[)?\s*\\(?:boxed|fbox)\s*\{", rest)
    if boxed_start:
        close = _balanced(rest, boxed_start.end() - 1)
        if close is not None:
            content = rest[boxed_start.end():close].strip()
            return content or None
    for line in rest.splitlines():
        if line.strip():
            line = line.strip()
            if bold_open and "**" in line:  # `**Final Answer: 12**`: the bold closes after the answer
                line = line[:line.rindex("**")] + line[line.rindex("**") + 2:]
            answer = _strip_wrappers(line)
            return answer or None
    return None


def strip_special_tokens(text: str) -> str:
    """Drop tokenizer special tokens (`<|im_end|>`, `</s>`, ...) a decoder left in the text; a newline takes
    each one's place, so `12<|im_end|>assistant` does not glue the next turn onto the answer."""
    return _SPECIAL_TOKEN_RE.sub("\n", text)


def answer_region(completion: str) -> str | None:
    """The part of a completion that may hold the graded answer (the think rule).

    After the last `</think>` when the completion closes a think block; None (nothing is graded) when it opens
    `<think>` and never closes it, since an answer inside the reasoning is a guess being weighed, not given;
    the whole text when it has no think tags (the prompt may have opened the block: a base model primed with
    `<think>` that answers without closing it is still graded, and `formatted`/format_reward show the lapse)."""
    if THINK_CLOSE in completion:
        return completion[completion.rindex(THINK_CLOSE) + len(THINK_CLOSE):]
    if THINK_OPEN in completion:
        return None
    return completion


_CHOICE_RE = re.compile(r"^\(?\s*([A-D])\s*\)?(?:[).:,\s]|$)")
_CHOICE_FALLBACK_RE = re.compile(r"answer\s+is\s*:?\s*\(?\s*([A-D])\b", re.IGNORECASE)


def extract_choice(text: str | None) -> str | None:
    """A letter A-D from an extracted answer such as `B`, `(B)`, `B) 42`, `\\text{B}`; None otherwise."""
    if not text:
        return None
    s = re.sub(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}", r"\1", text).strip()
    s = _strip_wrappers(s)
    match = _CHOICE_RE.match(s)
    if match:
        return match.group(1)
    match = re.fullmatch(r"(?:option|choice)\s+\(?([A-D])\)?\.?", s, re.IGNORECASE)
    return match.group(1).upper() if match else None


# ----------------------------------------------------------------------------------------------------------
# Numeric normalisation (GSM8K, the seed's rules)

_UNITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
          "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
# zero..ninety-nine: the range word answers really take (GSM8K answers written out are small); larger numbers
# in words ("one hundred") are not parsed, and the magnitude guard below keeps them from reading as 1.
_NUMBER_WORD_RE = re.compile(r"\b(?:(" + "|".join(_TENS) + r")(?:[\s-](one|two|three|four|five|six|seven|eight|nine)\b)?"
                             r"|(" + "|".join(_UNITS) + r"))\b")


def _number_word_value(match: re.Match) -> str:
    if match.group(3):
        return str(_UNITS.index(match.group(3)))
    return str(_TENS[match.group(1)] + (_UNITS.index(match.group(2)) if match.group(2) else 0))


_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?"
# unit words after a number, with an optional exponent: `18 cm^2`, `5 m^{3}`, `3 m/s`
_UNIT_TAIL = r"[a-z(](?:[a-z\s.'’/²³()-]|\^\{?\d\}?)*"
_NUMBER_THEN_WORDS_RE = re.compile(rf"^({_NUM})\s*{_UNIT_TAIL}$")
# "the answer is 18", "she makes 18 dollars": words, then the only number, then optional unit words
_WORDS_THEN_NUMBER_RE = re.compile(rf"^[a-z][a-z\s'’:,]*?\s({_NUM})(?:\s*{_UNIT_TAIL})?$")
# Words that change what the number means: "not 12", "12 or 13", "12 hundred". With one of them next to the
# number, the answer is not reduced to that number (it stays text and matches nothing).
_MEANING_WORDS = frozenset({"not", "no", "never", "nor", "neither", "either", "or", "except", "isn't", "cannot",
                            "hundred", "hundreds", "thousand", "thousands", "million", "millions", "billion",
                            "billions", "dozen", "dozens"})
# Thousands separators: `,` or a (thin / no-break) space, only between groups of exactly three digits
# (`1,000`, `1 000 000`); `1,2` is not 12.
_THOUSANDS_RE = re.compile(r"(?<![\d.,])\d{1,3}(?:(?P<sep>[, \u2009\u202f\u00a0])\d{3})(?:(?P=sep)\d{3})*(?![\d,])")


def _drop_thousands_separators(s: str) -> str:
    return _THOUSANDS_RE.sub(lambda m: re.sub(r"[, \u2009\u202f\u00a0]", "", m.group(0)), s)


def normalize_numeric_answer(text: str) -> str:
    """The seed's normalisation for numeric answers, e.g. `$1,000.00` -> `1000`, `ten` -> `10`, `5 cm.` -> `5`.

    Steps: unwrap \\text{}/\\mathrm{}/\\boxed{} and $...$, lowercase, keep the right-hand side of a trailing
    `x = ...`, drop `$` and thousands separators (`,` or a space between groups of three digits: `1 000`, not
    `1,2`), words zero..ninety-nine -> digits, `negative 5` -> `-5`, drop a trailing period, a percent sign,
    unit words after a number (`12 apples`, `5 (dollars)`, `18 cm^2`), words before a lone number (`the answer
    is 18`), and a zero fraction (`.0`, `.00`). Words that change the number's meaning (`not 12`, `12 or 13`,
    `1 hundred`: _MEANING_WORDS) keep the text as it is, so it matches nothing.
    Text that is not a number comes back lowercased and stripped, so it can still be compared as a string."""
    s = _strip_wrappers(str(text))
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox|mathbf)\s*\{([^{}]*)\}", r" \1 ", s)
    s = re.sub(r"\\[dt]?frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(\d+)\s*\}", r"\1/\2", s)
    s = s.replace("\\$", "$").replace("\\%", "%").replace("\\!", "").replace("\\,", "")
    s = s.replace("−", "-").replace("–", "-")
    s = s.strip().lower()
    if "=" in s:
        s = s.rsplit("=", 1)[1]
    s = s.replace("$", "")
    s = _drop_thousands_separators(s)
    s = _NUMBER_WORD_RE.sub(_number_word_value, s)
    s = re.sub(r"\b(?:negative|minus)\s+(?=[\d.])", "-", s)
    s = " ".join(s.split())
    s = s.rstrip(".").strip()
    s = s.rstrip("%").strip()
    match = _NUMBER_THEN_WORDS_RE.match(s) or _WORDS_THEN_NUMBER_RE.match(s)
    if match and not _MEANING_WORDS.intersection(re.findall(r"[a-z']+", s)):
        s = match.group(1)
    s = s.rstrip(".").strip()
    if re.fullmatch(r"[-+]?\d+\.0+", s):
        s = s[: s.index(".")]
    if s.startswith("+"):
        s = s[1:]
    return s


_PLAIN_NUMBER_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?", re.IGNORECASE)
_MAX_EXPONENT = 400


def _to_number(s: str) -> Fraction | None:
    """Parse `12`, `-3.5`, `.5`, `1.`, `4.5e33`, `7/8`, `-1./3` exactly; None for anything else.
    Exponents beyond +-400 are refused (a Fraction of 10**10**9 would never finish)."""
    s = s.strip()
    if "/" in s:
        num, _, den = s.partition("/")
        a, b = _to_number(num), _to_number(den)
        if a is None or b is None or b == 0 or "/" in num or "/" in den:
            return None
        return a / b
    if not _PLAIN_NUMBER_RE.fullmatch(s):
        return None
    mantissa, _, exponent = s.lower().partition("e")
    if exponent and abs(int(exponent)) > _MAX_EXPONENT:
        return None
    value = Fraction(mantissa.rstrip(".") or "0") if mantissa not in ("+.", "-.", ".") else None
    if value is None:
        return None
    return value * Fraction(10) ** int(exponent) if exponent else value


def _numbers_equal(a: Fraction, b: Fraction, rel_tol: float | None) -> bool:
    if a == b:
        return True
    if rel_tol is None:
        return False
    return math.isclose(float(a), float(b), rel_tol=rel_tol, abs_tol=0.0)


# ----------------------------------------------------------------------------------------------------------
# LaTeX answers: a cheap numeric path, then math-verify

_LATEX_SPACING = re.compile(r"\\[,;:! ]|\\q?quad|~")
_LATEX_UNIT_TAIL = re.compile(r"(?:\\(?:text|mathrm|mbox|textrm)\s*\{[^{}]*\}\s*)+$")
_SCI_RE = re.compile(r"^(.*?)\s*(?:\\times|\\cdot|\*|x)\s*10\s*\^\s*\{?\s*([-+]?\d+)\s*\}?$")


def latex_number(text: str) -> Fraction | None:
    """Exact value of a LaTeX answer that is just a number: `1,000`, `\\$5`, `90^\\circ`, `\\frac{3}{4}`,
    `-\\dfrac{1}{2}`, `4.5e33`, `4.5 \\times 10^{33}`, `5\\%`, `12 \\text{ cm}`; None when it is anything else."""
    s = _strip_wrappers(text)
    while True:  # \textbf{(073)} -> 073: a whole-answer text wrapper, then a parenthesised lone number
        unwrapped = re.fullmatch(r"\\(?:text|textbf|mathbf|mathrm|mbox)\s*\{([^{}]*)\}|\(\s*([^(),]*?)\s*\)", s.strip())
        if not unwrapped:
            break
        s = (unwrapped.group(1) if unwrapped.group(1) is not None else unwrapped.group(2)).strip()
    s = _LATEX_SPACING.sub(" ", s)
    s = s.replace("\\left", "").replace("\\right", "").replace("\\$", "").replace("$", "")
    s = s.replace("−", "-").strip()
    s = _LATEX_UNIT_TAIL.sub("", s).strip()
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?$", "", s).strip()
    s = re.sub(r"\\?%$", "", s).strip()
    s = re.sub(r"(?<=\d),(?=\d{3}(?:\D|$))", "", s) if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", s) else s
    sign = ""
    if s.startswith("-") and ("\\frac" in s or "\\dfrac" in s or "\\tfrac" in s):
        sign, s = "-", s[1:].strip()
    frac = re.fullmatch(r"\\[dt]?frac\s*\{\s*([-+]?[\d.]+)\s*\}\s*\{\s*([-+]?[\d.]+)\s*\}", s) or \
        re.fullmatch(r"\\[dt]?frac\s*(\d)\s*(\d)", s)
    if frac:
        a, b = _to_number(frac.group(1)), _to_number(frac.group(2))
        if a is None or b is None or b == 0:
            return None
        return (-1 if sign else 1) * a / b
    if sign:
        return None
    sci = _SCI_RE.match(s)
    if sci:
        mantissa = _to_number(sci.group(1)) if sci.group(1).strip() else Fraction(1)
        exponent = int(sci.group(2))
        if mantissa is None or abs(exponent) > _MAX_EXPONENT:
            return None
        return mantissa * Fraction(10) ** exponent
    return _to_number(s.replace(" ", ""))


def _python_to_latex(gold: str) -> str:
    """Minerva keeps 3 gold answers in Python syntax (`np.arcsin(10/13)`): write them as LaTeX."""
    return re.sub(r"\bnp\.(arcsin|arccos|arctan|sin|cos|tan|sqrt|log|exp|pi)\b",
                  lambda m: "\\" + ("arcsin" if m.group(1) == "arcsin" else m.group(1)), gold)


_MV = None


def _math_verify():
    global _MV
    if _MV is None:
        import math_verify  # sympy + antlr: ~1 s to import, so only when a LaTeX answer needs it

        _MV = math_verify
    return _MV


def _mv_parse(latex: str, timeout: int):
    """math-verify parse of a bare LaTeX answer: try `$...$`, then `\\boxed{...}`; keep the first attempt that
    yields a sympy object (both keep the raw string as a fallback element)."""
    mv = _math_verify()
    first = None
    for wrapped in (f"${latex}$", f"\\boxed{{{latex}}}"):
        parsed = mv.parse(wrapped, parsing_timeout=timeout)
        if first is None:
            first = parsed
        if any(not isinstance(item, str) for item in parsed):
            return parsed
    return first or []


def _mv_equal(pred: str, gold: str, rel_tol: float | None, timeout: int) -> bool:
    """math-verify comparison (runs in the main thread of whichever process calls it)."""
    mv = _math_verify()
    gold_parsed = _mv_parse(gold, timeout)
    pred_parsed = _mv_parse(pred, timeout)
    if not gold_parsed or not pred_parsed:
        return False
    if mv.verify(gold_parsed, pred_parsed, timeout_seconds=timeout):
        return True
    if rel_tol is not None:  # e.g. `\sqrt{2}` vs 1.41, or 4.52 \times 10^{33} vs 4.5e33 within tolerance
        for g in gold_parsed:
            for p in pred_parsed:
                if isinstance(g, str) or isinstance(p, str):
                    continue
                try:
                    gv, pv = complex(g.evalf()), complex(p.evalf())
                except Exception:
                    continue
                if gv.imag == 0 and pv.imag == 0 and math.isclose(gv.real, pv.real, rel_tol=rel_tol):
                    return True
    return False


def _mv_equal_guarded(pred: str, gold: str, rel_tol: float | None, timeout: int) -> bool:
    """_mv_equal that never raises (math-verify's TimeoutException is a BaseException)."""
    import signal

    from math_verify.errors import TimeoutException

    # math-verify arms signal.alarm() and cancels it afterwards, which would also cancel a caller's own
    # ITIMER_REAL timer (pytest-timeout's signal method, a stage's watchdog): re-arm what was pending.
    outer = signal.getitimer(signal.ITIMER_REAL) if hasattr(signal, "setitimer") else (0.0, 0.0)
    start = time.monotonic()
    try:
        return _mv_equal(pred, gold, rel_tol, timeout)
    except (Exception, TimeoutException) as exc:  # noqa: BLE001 - any failure is "not equal"
        logger.debug("math-verify failed on %r vs %r: %r", pred, gold, exc)
        return False
    finally:
        if outer[0] > 0:
            signal.setitimer(signal.ITIMER_REAL, max(outer[0] - (time.monotonic() - start), 1e-3), outer[1])


_POOL: ProcessPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _mv_equal_in_subprocess(pred: str, gold: str, rel_tol: float | None, timeout: int) -> bool:
    """Off the main thread SIGALRM is unavailable: compare in a worker process with a wall-clock deadline,
    and kill the worker if it overruns."""
    global _POOL
    import multiprocessing

    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        pool = _POOL
    future = pool.submit(_mv_equal_guarded, pred, gold, rel_tol, timeout)
    try:
        return bool(future.result(timeout=30 + 4 * timeout))  # first call also pays the worker's imports
    except FutureTimeout:
        with _POOL_LOCK:
            if _POOL is pool:
                _POOL = None
        for process in list(getattr(pool, "_processes", {}).values()):
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        return False
    except Exception:  # noqa: BLE001 - a crashed worker is "not equal"
        return False


def _latex_equal(pred: str, gold: str, rel_tol: float | None, timeout: int | None = None,
                 string_shortcut: bool = True) -> bool:
    if len(pred) > MAX_ANSWER_CHARS:
        return False
    timeout = TIMEOUT_SECONDS if timeout is None else timeout
    gold, pred = _python_to_latex(gold), _python_to_latex(pred)
    if string_shortcut and " ".join(pred.split()) == " ".join(gold.split()):
        return True
    gold_num, pred_num = latex_number(gold), latex_number(pred)
    if gold_num is not None and pred_num is not None:
        if _numbers_equal(gold_num, pred_num, rel_tol):
            return True
        if rel_tol is not None:
            return False  # both plain numbers and outside the tolerance: no need for sympy
    if threading.current_thread() is threading.main_thread():
        return _mv_equal_guarded(pred, gold, rel_tol, timeout)
    return _mv_equal_in_subprocess(pred, gold, rel_tol, timeout)


def _final_answer_equal(pred: str, gold: str, rel_tol: float | None, string_shortcut: bool = True) -> bool:
    """Seed normalisation, then exact numeric comparison when both sides are numbers. A gold that is not a
    plain number (a math benchmark graded with the Final Answer prompt) goes to the LaTeX comparison."""
    p, g = normalize_numeric_answer(pred), normalize_numeric_answer(gold)
    pn, gn = _to_number(p), _to_number(g)
    if pn is not None and gn is not None:
        return _numbers_equal(gn, pn, rel_tol)
    if p == g and p != "":
        return True
    if gn is None:
        return _latex_equal(pred, gold, rel_tol, string_shortcut=string_shortcut)
    return False


def _answers_match(pred: str, gold: str, answer_format: str, numeric_tolerance: float | None,
                   string_shortcut: bool) -> bool:
    if answer_format not in ANSWER_FORMATS:
        raise TinyReasonError(f"unknown answer_format {answer_format!r}; expected one of {', '.join(ANSWER_FORMATS)}")
    try:
        if answer_format == FINAL_ANSWER:
            return _final_answer_equal(pred, gold, numeric_tolerance, string_shortcut)
        if answer_format == BOXED:
            return _latex_equal(pred, gold, numeric_tolerance, string_shortcut=string_shortcut)
        letter = extract_choice(pred)
        return letter is not None and letter == gold.strip().upper()
    except Exception:  # noqa: BLE001 - grading must not crash an evaluation run
        logger.debug("grading failed on %r vs %r", pred, gold, exc_info=True)
        return False


def _extract_in_order(completion: str, answer_format: str) -> tuple[str | None, bool]:
    """The answer in `answer_format`'s own form (`**Final Answer:**` or `\\boxed{}`), else in the
    other form; the flag says whether the own form was found."""
    if answer_format == FINAL_ANSWER:
        primary, fallback = extract_final_answer, extract_boxed_answer
    else:
        primary, fallback = extract_boxed_answer, extract_final_answer
    extracted = primary(completion)
    if extracted is not None:
        return extracted, True
    return fallback(completion), False


def extract_answer(completion: str, answer_format: str = FINAL_ANSWER) -> str | None:
    """The answer a completion gives, looked for where and in the order grading uses."""
    region = answer_region(strip_special_tokens(completion or ""))
    return None if region is None else _extract_in_order(region, answer_format)[0]


def grade_answer(completion: str, gold: str, answer_format: str, numeric_tolerance: float | None = None, *,
                 string_shortcut: bool = True) -> Grade:
    """Extract the answer from a completion and compare it with `gold`.

    final_answer: `**Final Answer:**` line, seed normalisation, exact numeric comparison (relative
    `numeric_tolerance` if given). boxed: last `\\boxed{}`, then math-verify (symbolic/numeric equivalence,
    intervals, tuples, text). choice: the letter. See the module docstring for fallbacks and `formatted`.
    `string_shortcut=False` parses even an answer written exactly as the gold (verify_grader.py's check)."""
    if answer_format not in ANSWER_FORMATS:
        raise TinyReasonError(f"unknown answer_format {answer_format!r}; expected one of {', '.join(ANSWER_FORMATS)}")
    completion = answer_region(strip_special_tokens(completion or ""))
    if completion is None:  # a think block opened and never closed: no answer was given
        return Grade(None, False, False)
    extracted, formatted = _extract_in_order(completion, answer_format)
    if extracted is not None and not formatted:
        formatted = answer_format == CHOICE
    if answer_format == CHOICE:
        letter = extract_choice(extracted) if extracted is not None else None
        if letter is None:
            match = list(_CHOICE_FALLBACK_RE.finditer(completion))
            if not match:
                return Grade(extracted, False, False)
            letter, formatted = match[-1].group(1).upper(), False
        return Grade(letter, letter == gold.strip().upper(), formatted)
    if extracted is None:
        return Grade(None, False, False)
    correct = _answers_match(extracted, gold, answer_format, numeric_tolerance, string_shortcut)
    return Grade(extracted, correct, formatted)
