"""Paired statistics for A/B comparisons on the same items.

Binary scores: difference in proportions with a paired bootstrap interval and the
exact McNemar test (two-sided binomial test on the discordant pairs). Continuous
scores: mean difference with a paired bootstrap interval and a paired sign-flip
permutation test. All tests are two-sided.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass
class Comparison:
    metric: str
    kind: str
    base_mean: float
    adapter_mean: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    improved: int
    regressed: int
    n: int
    verdict: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def mcnemar_exact(improved: int, regressed: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pair counts."""
    n = improved + regressed
    if n == 0:
        return 1.0
    k = min(improved, regressed)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_ci(
    diffs: list[float], resamples: int = 5000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the mean paired difference."""
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    lo = means[int((1 - level) / 2 * resamples)]
    hi = means[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return lo, hi


def permutation_p(diffs: list[float], resamples: int = 10000, seed: int = 0) -> float:
    """Two-sided paired permutation test: randomly flip the sign of each difference."""
    observed = abs(sum(diffs))
    if observed == 0:
        return 1.0
    rng = random.Random(seed)
    hits = sum(
        abs(sum(d if rng.random() < 0.5 else -d for d in diffs)) >= observed - 1e-12 for _ in range(resamples)
    )
    return (hits + 1) / (resamples + 1)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def compare(
    metric: str,
    kind: str,
    base: list[float],
    adapter: list[float],
    alpha: float = 0.05,
    higher_is_better: bool = True,
) -> Comparison:
    """Compare paired per-item scores of the base and an adapter."""
    if len(base) != len(adapter) or not base:
        raise ValueError("paired comparison needs the same non-zero number of items in both arms")
    diffs = [a - b for a, b in zip(adapter, base, strict=True)]
    improved = sum(d > 0 for d in diffs) if higher_is_better else sum(d < 0 for d in diffs)
    regressed = sum(d < 0 for d in diffs) if higher_is_better else sum(d > 0 for d in diffs)
    p = mcnemar_exact(improved, regressed) if kind == "binary" else permutation_p(diffs)
    lo, hi = bootstrap_ci(diffs)
    mean_diff = sum(diffs) / len(diffs)
    gain = mean_diff if higher_is_better else -mean_diff
    verdict = "inconclusive" if p >= alpha else ("better" if gain > 0 else "worse")
    return Comparison(
        metric,
        kind,
        sum(base) / len(base),
        sum(adapter) / len(adapter),
        mean_diff,
        lo,
        hi,
        p,
        improved,
        regressed,
        len(diffs),
        verdict,
    )
