"""Statistics for benchmark results: pure functions (no I/O; stdlib + numpy only), checked against scipy in tests.

Public API:
    wilson_interval(k, n, confidence=0.95) -> (lo, hi)         score interval for one accuracy
    mcnemar_exact(b, c) -> p                                   two-sided exact McNemar test
    newcombe_paired_interval(both, b, c, neither, confidence)  interval for a paired difference of accuracies
    paired_difference(correct_a, correct_b, confidence=0.95, method="newcombe", n_boot=10_000, seed=0) -> dict
    pass_at_k(n, c, k) -> float                                unbiased pass@k (Chen et al. 2021)
    mean_at_k(per_problem_correct_lists) -> float              mean accuracy over k samples per problem

Conventions for paired comparisons of model A (e.g. base) and model B (e.g. adapter) on the same problems:
b = problems A got right and B got wrong, c = problems A got wrong and B got right; the difference reported is
accuracy(B) - accuracy(A) = (c - b) / n.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Sequence


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (no continuity correction).

    With n == 0 there is no information and the interval is (0.0, 1.0)."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    z = _z(confidence)
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denom
    lo, hi = center - half, center + half
    # exact at the edges (floating error would otherwise give 1e-17 instead of 0)
    return (0.0 if k == 0 else max(0.0, lo)), (1.0 if k == n else min(1.0, hi))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar test: under H0 the b + c discordant pairs split Binomial(b + c, 1/2);
    p = min(1, 2 * P(X <= min(b, c))). Exact integer arithmetic; b = c = 0 gives 1.0."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    # int / int is correctly rounded in Python even for huge integers (tiny p-values underflow to 0.0)
    return min(1.0, (2 * tail) / (1 << n))


def newcombe_paired_interval(both: int, b: int, c: int, neither: int,
                             confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's (1998, method 10) square-and-add interval for p_B - p_A with paired data.

    both/neither: problems both models got right/wrong; b: A right, B wrong; c: A wrong, B right.
    Built from Wilson intervals of the two marginal accuracies, combined with the phi correlation of the
    2x2 table (phi corrected towards 0 by n/2 when positive, as in Newcombe's paper). Unlike a bootstrap
    it keeps a non-zero width when b = c = 0."""
    n = both + b + c + neither
    if min(both, b, c, neither) < 0 or n == 0:
        raise ValueError(f"need non-negative counts with n > 0, got {both}, {b}, {c}, {neither}")
    p1, p2 = (both + c) / n, (both + b) / n  # accuracy of B, accuracy of A
    estimate = p1 - p2
    l1, u1 = wilson_interval(both + c, n, confidence)
    l2, u2 = wilson_interval(both + b, n, confidence)
    margins = (both + c) * (b + neither) * (both + b) * (c + neither)
    if margins == 0:
        phi = 0.0
    else:
        cross = both * neither - c * b
        if cross > n / 2:
            phi = (cross - n / 2) / math.sqrt(margins)
        elif cross >= 0:
            phi = 0.0
        else:
            phi = cross / math.sqrt(margins)
    d1, e2 = p1 - l1, u2 - p2
    d2, e1 = p2 - l2, u1 - p1
    lo = estimate - math.sqrt(max(0.0, d1 * d1 + e2 * e2 - 2 * phi * d1 * e2))
    hi = estimate + math.sqrt(max(0.0, d2 * d2 + e1 * e1 - 2 * phi * d2 * e1))
    return max(-1.0, lo), min(1.0, hi)


def _paired_counts(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> tuple[int, int, int, int]:
    if len(correct_a) != len(correct_b):
        raise ValueError(f"paired results need equal lengths, got {len(correct_a)} and {len(correct_b)}")
    if not correct_a:
        raise ValueError("paired results are empty")
    both = b = c = neither = 0
    for a_ok, b_ok in zip(correct_a, correct_b):
        a_ok, b_ok = bool(a_ok), bool(b_ok)
        if a_ok and b_ok:
            both += 1
        elif a_ok:
            b += 1
        elif b_ok:
            c += 1
        else:
            neither += 1
    return both, b, c, neither


def paired_difference(correct_a: Sequence[bool], correct_b: Sequence[bool], confidence: float = 0.95,
                      method: str = "newcombe", n_boot: int = 10_000, seed: int = 0) -> dict:
    """Compare two models graded on the same problems (index i of both lists is the same problem).

    Returns {"n", "accuracy_a", "accuracy_b", "difference" (= accuracy_b - accuracy_a), "ci_low", "ci_high",
    "confidence", "method", "b", "c", "p_value" (exact McNemar)}.

    method="newcombe" (default): Newcombe's closed-form paired interval (deterministic; good coverage even
    for small n or b = c = 0). method="bootstrap": percentile interval of a paired bootstrap with `n_boot`
    resamples of the n problems, seeded by `seed` (resampling problems only moves the (b, c, rest) counts,
    so it is drawn as a multinomial over those three cells: exact in distribution, O(n_boot))."""
    both, b, c, neither = _paired_counts(correct_a, correct_b)
    n = both + b + c + neither
    if method == "newcombe":
        lo, hi = newcombe_paired_interval(both, b, c, neither, confidence)
    elif method == "bootstrap":
        import numpy as np

        if n_boot < 1:
            raise ValueError(f"n_boot must be >= 1, got {n_boot}")
        _z(confidence)  # validates
        rng = np.random.default_rng(seed)
        draws = rng.multinomial(n, [b / n, c / n, (both + neither) / n], size=n_boot)
        diffs = (draws[:, 1] - draws[:, 0]) / n
        alpha = 1.0 - confidence
        lo, hi = (float(x) for x in np.quantile(diffs, [alpha / 2, 1 - alpha / 2]))
    else:
        raise ValueError(f"unknown interval method {method!r}; use 'newcombe' or 'bootstrap'")
    return {
        "n": n, "accuracy_a": (both + b) / n, "accuracy_b": (both + c) / n, "difference": (c - b) / n,
        "ci_low": lo, "ci_high": hi, "confidence": confidence, "method": method,
        "b": b, "c": c, "p_value": mcnemar_exact(b, c),
    }


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, "Evaluating Large Language
    Models Trained on Code"): 1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1..n} (1 - k/i), which
    never forms the huge binomials."""
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_at_k(per_problem_correct_lists: Sequence[Sequence[bool]]) -> float:
    """mean@k: the accuracy of each problem's k samples (fraction correct), averaged over problems.
    Equals the expected single-sample accuracy; every problem weighs the same whatever its k."""
    if not per_problem_correct_lists:
        raise ValueError("no problems")
    total = 0.0
    for samples in per_problem_correct_lists:
        if len(samples) == 0:
            raise ValueError("a problem has no samples")
        total += sum(map(bool, samples)) / len(samples)
    return total / len(per_problem_correct_lists)
