"""Reward functions: TRL's signature, the evaluation grader, Tina's shapes."""

from __future__ import annotations

import math

import pytest

from test_grpo import one_thread, toy_config, toy_setup  # noqa: F401 - fixtures
from tinyreason import rewards
from tinyreason.config import GrpoSettings
from tinyreason.grading import grade_answer

GOOD = "Let me add.\n</think>\nThe final answer is $\\boxed{\\frac{1}{2}}$."
WRONG = "Hmm.\n</think>\nThe final answer is $\\boxed{3}$."
NO_CLOSE = "I keep thinking... \\boxed{0.5}"
TWICE = "a </think> b </think> \\boxed{1/2}"


def test_format_reward_wants_exactly_one_think_close():
    assert rewards.format_reward([GOOD, WRONG, NO_CLOSE, TWICE, ""]) == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_format_reward_accepts_conversational_completions():
    conv = [[{"role": "assistant", "content": GOOD}], [{"role": "assistant", "content": NO_CLOSE}]]
    assert rewards.format_reward(conv) == [1.0, 0.0]


def test_accuracy_reward_is_the_evaluation_grader():
    completions = [GOOD, WRONG, NO_CLOSE, "no answer at all"]
    answers = ["0.5"] * 4  # math-verify: \frac{1}{2} == 0.5
    got = rewards.accuracy_reward(completions, answer=answers, answer_format=["boxed"] * 4)
    assert got == [1.0, 0.0, 1.0, 0.0]
    assert got == [float(grade_answer(c, a, "boxed").correct) for c, a in zip(completions, answers)]


def test_accuracy_reward_follows_the_rows_answer_format():
    completion = "</think>\n**Final Answer:** 72"
    assert rewards.accuracy_reward([completion], answer=["72"], answer_format=["final_answer"]) == [1.0]
    assert rewards.accuracy_reward([completion], answer=["72"]) == [1.0]  # boxed, final-answer fallback


def test_cosine_reward_shape_matches_open_rs():
    v = rewards.cosine_reward_value
    assert v(True, 0, 1000) == pytest.approx(1.0) and v(True, 1000, 1000) == pytest.approx(0.5)
    assert v(False, 0, 1000) == pytest.approx(0.0) and v(False, 1000, 1000) == pytest.approx(-0.5)
    assert v(True, 500, 1000) == pytest.approx(0.75) and v(False, 500, 1000) == pytest.approx(-0.25)
    assert v(True, 5000, 1000) == pytest.approx(0.5)  # clamped past max_len
    # monotone: shorter is better when correct, and less bad when wrong
    assert v(True, 100, 1000) > v(True, 900, 1000) and v(False, 100, 1000) > v(False, 900, 1000)
    cosine = rewards.cosine_reward(max_len=100)
    short_right = "</think>\\boxed{2}"
    long_right = "x" * 200 + short_right
    got = cosine([short_right, long_right, "</think>\\boxed{3}"], answer=["2", "2", "2"])
    assert got[0] > got[1] == pytest.approx(0.5) and got[2] < 0
    expected0 = 0.5 + 0.5 * 0.5 * (1 + math.cos(math.pi * len(short_right) / 100))
    assert got[0] == pytest.approx(expected0)


def test_length_reward_kimi_shape():
    short_ok, long_ok, long_bad = "\\boxed{2}", "y" * 50 + "\\boxed{2}", "z" * 50 + "\\boxed{9}"
    got = rewards.length_reward([short_ok, long_ok, long_bad], answer=["2", "2", "2"])
    assert got == pytest.approx([0.5, -0.5, -0.5])
    assert rewards.length_reward(["\\boxed{9}", "\\boxed{2}"], answer=["2", "2"]) == [0.0, 0.0]  # same length


def test_build_reward_funcs_names_weights_and_params():
    s = GrpoSettings(reward_funcs=["format", "cosine", "accuracy", "length"], reward_weights=[1.0, 2.0, 0.5, 1.0],
                     cosine_max_len=10)
    funcs, weights = rewards.build_reward_funcs(s)
    assert [f.__name__ for f in funcs] == ["format", "cosine", "accuracy", "length"]  # TRL's log names
    assert weights == [1.0, 2.0, 0.5, 1.0]
    assert funcs[1](["x" * 20 + "\\boxed{1}"], answer=["1"]) == [pytest.approx(0.5)]  # max_len 10 used
    assert rewards.format_reward.__name__ == "format_reward"  # the module's functions are not renamed


def test_overlong_reward_is_dapos_soft_punishment_on_token_counts():
    """0 up to max - cache tokens, linear down to -1 at max (DAPO eq. 13); read from TRL's completion_ids."""
    s = GrpoSettings(reward_funcs=["overlong"], reward_weights=[1.0], max_completion_length=100, overlong_cache=20)
    (overlong,), _ = rewards.build_reward_funcs(s)
    assert overlong.__name__ == "overlong"
    texts = ["short", "mid", "longer", "cut"]
    ids = [[7] * 50, [7] * 80, [7] * 90, [7] * 100]
    assert overlong(texts, completion_ids=ids, answer=["1"] * 4) == [0.0, 0.0, pytest.approx(-0.5), -1.0]
    (default,), _ = rewards.build_reward_funcs(GrpoSettings(reward_funcs=["overlong"], reward_weights=[1.0],
                                                            max_completion_length=100))
    assert default(texts, completion_ids=[[7] * 80, [7] * 90]) == [0.0, pytest.approx(-0.5)]  # cache: a fifth


def test_overlong_reward_reaches_trls_trainer(toy_setup, one_thread):  # noqa: F811
    """Named in params, it is called by GRPOTrainer with the rollouts' token ids and logged by name."""
    from tinyreason.grpo import train_grpo

    root, model_dir, train_path = toy_setup
    cfg = toy_config(model_dir, train_path, 1, reward_funcs=["overlong"], reward_weights=[1.0], overlong_cache=4)
    result = train_grpo(cfg, train_path, root / "ckpt-overlong")
    logged = [e for e in result.trainer.state.log_history if "rewards/overlong/mean" in e]
    assert logged and -1.0 <= logged[0]["rewards/overlong/mean"] <= 0.0
    # 8-token budget, cache 4: each completion loses max(0, length - 4) / 4, so the mean penalty is at least
    # that of the mean length (convexity), and exactly -1 when every completion hit the budget
    mean_length, mean_reward = logged[0]["completions/mean_length"], logged[0]["rewards/overlong/mean"]
    assert mean_reward <= -max(0.0, mean_length - 4) / 4 + 1e-6
    if logged[0]["completions/clipped_ratio"] == 1.0:
        assert mean_reward == pytest.approx(-1.0)
