"""GRPO reward functions, TRL's signature: `f(completions, **dataset_columns) -> list[float]`.

Each is a small pure function of the completion text (and the row's `answer` column). Accuracy uses
the SAME grader as evaluation (`grading.grade_answer`), so the reward the policy climbs is the
score the evaluate stage reports. Completions may be plain strings (our prompts are rendered text)
or TRL's conversational form (`[{"role": "assistant", "content": ...}]`).

    format_reward      1 if the completion closes its reasoning exactly once (`</think>`), else 0
    accuracy_reward    1 if the answer (boxed by default) is correct under grade_answer, else 0
    cosine_reward(...) accuracy scaled by length on a half cosine (Open-RS3 / open-r1 "cosine")
    length_reward      Kimi-1.5 length penalty across the batch (Tina's "length", used by STILL-3)
    overlong_reward(...) DAPO's soft overlong punishment on token counts (TRL's implementation)
    REWARDS                        the registry: params name -> builder of the function
    build_reward_funcs(grpo_settings) -> (functions, weights) for GRPOTrainer

TRL logs each function's mean and std under `rewards/<__name__>/mean|std` and the weighted sum
under `reward`; the names are the params names, the keys of REWARDS (config.py validates
train.grpo.reward_funcs against them, tracking.py and dvc.yaml plot each one's curve).
"""

from __future__ import annotations

import math
from typing import Callable

from tinyreason.errors import ConfigError
from tinyreason.formats import BOXED, THINK_CLOSE
from tinyreason.grading import grade_answer

DEFAULT_ANSWER_FORMAT = BOXED


def completion_text(completion) -> str:
    """A completion as text: a string as is; a conversational completion's last message content."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content") or "")
    return "" if completion is None else str(completion)


def _per_row(value, n: int) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value] * n


def _correct(completions, answer, answer_format=None) -> list[bool]:
    texts = [completion_text(c) for c in completions]
    formats = _per_row(answer_format, len(texts))
    golds = _per_row(answer, len(texts))
    return [grade_answer(t, str(g), f or DEFAULT_ANSWER_FORMAT).correct if g is not None else False
            for t, g, f in zip(texts, golds, formats)]


def format_reward(completions, **kwargs) -> list[float]:
    """1.0 when the completion contains exactly one `</think>` (the prompt already opened `<think>`).

    Tina/open-rs count "\\n</think>\\n"; counting the tag alone is the same check without making the
    surrounding whitespace part of the format."""
    return [1.0 if completion_text(c).count(THINK_CLOSE) == 1 else 0.0 for c in completions]


def accuracy_reward(completions, answer, answer_format=None, **kwargs) -> list[float]:
    """1.0 when grade_answer(completion, answer, answer_format) is correct (boxed unless the row says)."""
    return [1.0 if ok else 0.0 for ok in _correct(completions, answer, answer_format)]


def cosine_reward_value(correct: bool, length: int, max_len: int, correct_short: float = 1.0,
                        correct_long: float = 0.5, wrong_short: float = 0.0, wrong_long: float = -0.5) -> float:
    """Half cosine from the `*_short` value at length 0 to the `*_long` value at `max_len` (clamped).

    Defaults are Tina's (open-r1's cosine_scaled_reward): short correct answers earn most, long wrong
    answers are penalised most."""
    progress = min(max(length, 0) / max_len, 1.0)
    weight = 0.5 * (1.0 + math.cos(progress * math.pi))  # 1 at length 0 -> 0 at max_len
    short, long_ = (correct_short, correct_long) if correct else (wrong_short, wrong_long)
    return long_ + (short - long_) * weight


def cosine_reward(max_len: int = 1000, correct_short: float = 1.0, correct_long: float = 0.5,
                  wrong_short: float = 0.0, wrong_long: float = -0.5) -> Callable:
    """The cosine length-scaled accuracy reward (Open-RS3), length in characters as in Tina."""

    def cosine(completions, answer, answer_format=None, **kwargs) -> list[float]:
        texts = [completion_text(c) for c in completions]
        return [cosine_reward_value(ok, len(t), max_len, correct_short, correct_long, wrong_short, wrong_long)
                for t, ok in zip(texts, _correct(completions, answer, answer_format))]

    return cosine


def length_reward(completions, answer, answer_format=None, **kwargs) -> list[float]:
    """Kimi-1.5 length reward over the completions of one call (Tina's `length`, STILL-3 preset).

    lambda = 0.5 - (len - min_len) / (max_len - min_len), lengths in characters; correct answers get
    lambda, wrong ones min(0, lambda); all zero when every completion has the same length."""
    lengths = [len(completion_text(c)) for c in completions]
    if not lengths or max(lengths) == min(lengths):
        return [0.0] * len(lengths)
    lo, hi = min(lengths), max(lengths)
    out = []
    for length, ok in zip(lengths, _correct(completions, answer, answer_format)):
        lam = 0.5 - (length - lo) / (hi - lo)
        out.append(lam if ok else min(0.0, lam))
    return out


def overlong_reward(max_completion_length: int, cache: int | None = None) -> Callable:
    """DAPO's soft overlong punishment (TRL's get_soft_overlong_punishment): 0 up to max_completion_length
    - cache tokens, then linearly down to -1 at max_completion_length. cache None: a fifth of the budget."""
    from trl.rewards import get_soft_overlong_punishment

    punish = get_soft_overlong_punishment(max_completion_length, cache or max(1, max_completion_length // 5))

    def overlong(completions, completion_ids, **kwargs) -> list[float]:
        return punish(completion_ids)

    return overlong


def _named(fn: Callable, name: str) -> Callable:
    """A wrapper of `fn` called `name` (TRL logs rewards by function name)."""

    def wrapper(completions, **kwargs):
        return fn(completions, **kwargs)

    wrapper.__name__ = wrapper.__qualname__ = name
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _cosine_of(settings) -> Callable:
    """`cosine_reward` shaped by GrpoSettings' cosine_* params (Tina's defaults without settings)."""
    if settings is None:
        return cosine_reward()
    return cosine_reward(max_len=settings.cosine_max_len, correct_short=settings.cosine_correct_short,
                         correct_long=settings.cosine_correct_long, wrong_short=settings.cosine_wrong_short,
                         wrong_long=settings.cosine_wrong_long)


def _overlong_of(settings) -> Callable:
    """`overlong_reward` for GrpoSettings' completion budget and overlong_cache (3584 tokens without settings)."""
    if settings is None:
        return overlong_reward(3584)
    return overlong_reward(settings.max_completion_length, settings.overlong_cache)


# The reward functions GRPO can use, by params name (train.grpo.reward_funcs), defined here once. Each
# entry builds its function from GrpoSettings (or None); cosine and overlong read them.
REWARDS: dict[str, Callable] = {
    "format": lambda settings: format_reward,
    "accuracy": lambda settings: accuracy_reward,
    "cosine": _cosine_of,
    "length": lambda settings: length_reward,
    "overlong": _overlong_of,
}


def reward_function(name: str, settings=None) -> Callable:
    """The reward function for a params name, named so (TRL logs it by name); `settings` (GrpoSettings)
    parameterises `cosine` and `overlong`."""
    if name not in REWARDS:
        raise ConfigError(f"train.grpo.reward_funcs: unknown reward {name!r} (known: {', '.join(REWARDS)})")
    return _named(REWARDS[name](settings), name)


def build_reward_funcs(settings) -> tuple[list[Callable], list[float]]:
    """GrpoSettings -> (reward functions, weights) in params order, for GRPOTrainer/GRPOConfig."""
    funcs = [reward_function(name, settings) for name in settings.reward_funcs]
    return funcs, [float(w) for w in settings.reward_weights]

