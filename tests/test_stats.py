"""Statistics: hand-computed values, scipy cross-checks, brute-force enumeration for pass@k."""

import itertools
import math
import random

import numpy as np
import pytest
from scipy import stats as sps

from tinyreason.stats import (
    mcnemar_exact,
    mean_at_k,
    newcombe_paired_interval,
    paired_difference,
    pass_at_k,
    wilson_interval,
)


# ------------------------------------------------------------------------------------------------ Wilson

def test_wilson_hand_computed_15_of_50():
    # p = 0.3, z = 1.959964, z^2/n = 0.0768292: centre 0.3384146 / 1.0768292 = 0.314270,
    # half-width 1.959964 * sqrt(0.0042 + 0.000384146) / 1.0768292 = 0.123233
    lo, hi = wilson_interval(15, 50)
    assert lo == pytest.approx(0.191036, abs=1e-5)
    assert hi == pytest.approx(0.437504, abs=1e-5)


@pytest.mark.parametrize("k, n", [(0, 10), (1, 10), (5, 10), (10, 10), (15, 50), (612, 1319), (1, 1), (499, 500)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_matches_scipy(k, n, confidence):
    ref = sps.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    lo, hi = wilson_interval(k, n, confidence)
    assert lo == pytest.approx(ref.low, abs=1e-12)
    assert hi == pytest.approx(ref.high, abs=1e-12)


def test_wilson_edges_and_errors():
    assert wilson_interval(0, 20)[0] == 0.0
    assert wilson_interval(20, 20)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    narrow, wide = wilson_interval(50, 100, 0.9), wilson_interval(50, 100, 0.99)
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]
    for bad in [(-1, 5), (6, 5), (1, -1)]:
        with pytest.raises(ValueError):
            wilson_interval(*bad)
    with pytest.raises(ValueError):
        wilson_interval(1, 2, confidence=1.0)


# ------------------------------------------------------------------------------------------------ McNemar

def test_mcnemar_hand_computed():
    # b=3, c=12: 2 * sum_{i<=3} C(15, i) / 2^15 = 2 * (1 + 15 + 105 + 455) / 32768 = 1152 / 32768
    assert mcnemar_exact(3, 12) == pytest.approx(1152 / 32768, rel=1e-12)
    assert mcnemar_exact(12, 3) == mcnemar_exact(3, 12)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 1) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)


@pytest.mark.parametrize("b, c", [(0, 5), (1, 9), (7, 8), (20, 40), (100, 130), (3000, 3300), (0, 1500)])
def test_mcnemar_matches_scipy_binomtest(b, c):
    ref = sps.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue
    assert mcnemar_exact(b, c) == pytest.approx(ref, rel=1e-9, abs=1e-300)


def test_mcnemar_rejects_negative():
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


# ------------------------------------------------------------------------------------------------ paired difference

def _pairs(both, b, c, neither, seed=0):
    a_list = [True] * both + [True] * b + [False] * c + [False] * neither
    b_list = [True] * both + [False] * b + [True] * c + [False] * neither
    order = list(range(len(a_list)))
    random.Random(seed).shuffle(order)  # order of problems must not matter
    return [a_list[i] for i in order], [b_list[i] for i in order]


def test_newcombe_reference_value():
    # Cavo et al. 2012 table [[59, 6], [16, 80]] (Fagerland, Lydersen & Laake, "Statistical Analysis of
    # Contingency Tables", ch. 8; R package contingencytables test-ch8.R): estimate -0.0621, 95% CI
    # -0.1186 to -0.0046 for p1+ - p+1. In our terms B's accuracy is the row margin: c = 6, b = 16.
    lo, hi = newcombe_paired_interval(both=59, b=16, c=6, neither=80)
    assert lo == pytest.approx(-0.1186, abs=5e-5)
    assert hi == pytest.approx(-0.0046, abs=5e-5)


def test_paired_difference_newcombe():
    a, b = _pairs(59, 16, 6, 80)
    result = paired_difference(a, b)
    assert result["n"] == 161
    assert (result["b"], result["c"]) == (16, 6)
    assert result["difference"] == pytest.approx((6 - 16) / 161)
    assert result["accuracy_b"] - result["accuracy_a"] == pytest.approx(result["difference"])
    assert result["ci_low"] == pytest.approx(-0.1186, abs=5e-5)
    assert result["ci_high"] == pytest.approx(-0.0046, abs=5e-5)
    assert result["p_value"] == pytest.approx(sps.binomtest(6, 22).pvalue)
    assert result["method"] == "newcombe"
    # swapping the models flips the sign and mirrors the interval
    swapped = paired_difference(b, a)
    assert swapped["difference"] == pytest.approx(-result["difference"])
    assert (swapped["b"], swapped["c"]) == (6, 16)


def test_paired_difference_no_discordant_pairs_keeps_width():
    a, b = _pairs(40, 0, 0, 60)
    result = paired_difference(a, b)
    assert result["difference"] == 0.0
    assert result["p_value"] == 1.0
    assert result["ci_low"] < 0.0 < result["ci_high"]


def test_paired_bootstrap_is_seeded_and_close_to_normal_approximation():
    a, b = _pairs(500, 60, 100, 340)
    r1 = paired_difference(a, b, method="bootstrap", n_boot=20_000, seed=7)
    r2 = paired_difference(a, b, method="bootstrap", n_boot=20_000, seed=7)
    r3 = paired_difference(a, b, method="bootstrap", n_boot=20_000, seed=8)
    assert (r1["ci_low"], r1["ci_high"]) == (r2["ci_low"], r2["ci_high"])
    assert (r1["ci_low"], r1["ci_high"]) != (r3["ci_low"], r3["ci_high"])
    # Wald interval for a paired difference: var = ((b + c)/n - d^2) / n
    n, d = 1000, 0.04
    se = math.sqrt(((60 + 100) / n - d * d) / n)
    assert r1["ci_low"] == pytest.approx(d - 1.959964 * se, abs=0.003)
    assert r1["ci_high"] == pytest.approx(d + 1.959964 * se, abs=0.003)
    # and Newcombe agrees at this size
    newcombe = paired_difference(a, b)
    assert newcombe["ci_low"] == pytest.approx(r1["ci_low"], abs=0.004)
    assert newcombe["ci_high"] == pytest.approx(r1["ci_high"], abs=0.004)


def test_paired_bootstrap_matches_resampling_pairs():
    """The multinomial shortcut equals resampling the (a_i, b_i) pairs with replacement, in distribution."""
    a, b = _pairs(30, 8, 14, 28)
    fast = paired_difference(a, b, method="bootstrap", n_boot=40_000, seed=1)
    rng = np.random.default_rng(2)
    diff = np.array(b, dtype=float) - np.array(a, dtype=float)
    idx = rng.integers(0, len(diff), size=(40_000, len(diff)))
    slow = np.quantile(diff[idx].mean(axis=1), [0.025, 0.975])
    assert fast["ci_low"] == pytest.approx(slow[0], abs=1 / 80 + 1e-9)
    assert fast["ci_high"] == pytest.approx(slow[1], abs=1 / 80 + 1e-9)


def test_paired_difference_errors():
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([True], [True, False])
    with pytest.raises(ValueError, match="empty"):
        paired_difference([], [])
    with pytest.raises(ValueError, match="method"):
        paired_difference([True], [False], method="wald")


# ------------------------------------------------------------------------------------------------ pass@k, mean@k

def _pass_at_k_bruteforce(n, c, k):
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n, c, k", [(n, c, k) for n in range(1, 8) for c in range(0, n + 1) for k in range(1, n + 1)])
def test_pass_at_k_bruteforce(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(_pass_at_k_bruteforce(n, c, k), abs=1e-12)


def test_pass_at_k_hand_values_and_stability():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the sample accuracy
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(4, 0, 2) == 0.0
    assert pass_at_k(4, 3, 2) == 1.0  # fewer than k failures: every k-subset has a success
    # n large: the binomial form would need C(2000, 1000); the product form stays exact-ish
    expected = 1 - math.comb(1990, 1000) / math.comb(2000, 1000)
    assert pass_at_k(2000, 10, 1000) == pytest.approx(expected, rel=1e-12)
    for bad in [(3, 4, 1), (3, 1, 0), (3, 1, 4), (3, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_mean_at_k():
    lists = [[True, False, False, False], [True, True, True, True], [False] * 4]
    assert mean_at_k(lists) == pytest.approx((0.25 + 1 + 0) / 3)
    # mean@k is pass@1 averaged over problems
    assert mean_at_k(lists) == pytest.approx(sum(pass_at_k(4, sum(s), 1) for s in lists) / 3)
    with pytest.raises(ValueError):
        mean_at_k([])
    with pytest.raises(ValueError):
        mean_at_k([[True], []])
