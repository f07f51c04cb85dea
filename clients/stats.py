"""Paired statistics for A/B comparisons on the same items.

Binary scores: difference in proportions with a paired bootstrap interval and the
exact McNemar test (two-sided binomial test on the discordant pairs). Continuous
scores: mean difference with a paired bootstrap interval and a paired sign-flip
permutation test. Pairwise judge outcomes: win rate (ties count half) with a bootstrap
interval and a sign test on wins against losses. All tests are two-sided.

Verdicts: **better** (significant gain), **non-inferior** (not better, but the whole
interval of the gain lies above ``-margin``; only when a margin is given), **worse**
(significant loss), **inconclusive** (none of these).
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
    margin: float | None = None
    higher_is_better: bool = True
    improved_examples: list[str] | None = None
    regressed_examples: list[str] | None = None

    def adjust(self, p_value: float, alpha: float) -> None:
        """Take a multiplicity-adjusted p-value and decide the verdict again."""
        self.p_value = p_value
        sign = 1 if self.higher_is_better else -1
        gain_low = self.ci_low if self.higher_is_better else -self.ci_high
        self.verdict = verdict(p_value, sign * self.diff, gain_low, alpha, self.margin)

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


def verdict(p: float, gain: float, gain_low: float, alpha: float, margin: float | None) -> str:
    """``gain`` and ``gain_low`` (interval bound) are oriented so that positive is good."""
    if p < alpha and gain > 0:
        return "better"
    if margin is not None and gain_low > -margin:
        return "non-inferior"
    if p < alpha and gain < 0:
        return "worse"
    return "inconclusive"


def compare(
    metric: str,
    kind: str,
    base: list[float],
    adapter: list[float],
    alpha: float = 0.05,
    higher_is_better: bool = True,
    margin: float | None = None,
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
    gain_low = lo if higher_is_better else -hi
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
        verdict(p, gain, gain_low, alpha, margin),
        margin,
        higher_is_better,
    )


def judge_compare(outcomes: list[float], alpha: float = 0.05, margin: float | None = None) -> Comparison:
    """Pairwise judge outcomes per item: 1 adapter wins, 0.5 tie, 0 base wins."""
    wins = sum(o == 1 for o in outcomes)
    losses = sum(o == 0 for o in outcomes)
    p = mcnemar_exact(wins, losses)  # the sign test: a binomial test on the non-tied items
    centred = [o - 0.5 for o in outcomes]
    lo, hi = bootstrap_ci(centred)
    rate = sum(outcomes) / len(outcomes)
    return Comparison(
        "judge_win_rate",
        "judge",
        0.5,
        rate,
        rate - 0.5,
        lo,
        hi,
        p,
        wins,
        losses,
        len(outcomes),
        verdict(p, rate - 0.5, lo, alpha, margin),
        margin,
    )
