"""Paired statistics for A/B comparisons on the same items, computed with ``scipy.stats``.

Binary scores: difference in proportions with a paired bootstrap interval and the
exact McNemar test (two-sided binomial test on the discordant pairs). Continuous
scores: mean difference with a paired bootstrap interval and a paired sign-flip
permutation test. Pairwise judge outcomes: win rate (ties count half) with a bootstrap
interval and a sign test on wins against losses. All tests are two-sided.

The bootstrap resamples items, i.e. the per-item differences ``adapter - base`` (the mean
of the differences is the difference of the means, so this is the paired bootstrap);
the permutation test flips the sign of each difference (scipy's one-sample
``permutation_type="samples"``; exact when ``2**n`` is at most the number of resamples).
Both use a fixed seed, so a comparison is reproducible.

Verdicts: **better** (significant gain), **non-inferior** (not better, but the whole
interval of the gain lies above ``-margin``; only when a margin is given), **worse**
(significant loss), **inconclusive** (none of these).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tuneship.clients.results import Comparison, Verdict

__all__ = [
    "Comparison",
    "adjust_holm",
    "bootstrap_ci",
    "compare",
    "holm",
    "judge_compare",
    "mcnemar_exact",
    "permutation_p",
    "verdict",
]

BOOTSTRAP_RESAMPLES = 5000
PERMUTATION_RESAMPLES = 10000
# Resamples evaluated per vectorized batch: bounds memory at batch x n floats.
BATCH = 1000


def mcnemar_exact(improved: int, regressed: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pair counts (1.0 when there are none)."""
    from scipy.stats import binomtest

    n = improved + regressed
    return 1.0 if n == 0 else float(binomtest(improved, n, 0.5).pvalue)


def _mean(x: Any, axis: int = -1) -> Any:
    """The statistic, vectorized over resamples (numpy arrays)."""
    return x.mean(axis=axis)


def bootstrap_ci(
    diffs: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of paired differences.

    Args:
        diffs: per-item differences ``adapter - base`` (n >= 1).
        resamples: bootstrap resamples.
        level: confidence level of the two-sided interval.
        seed: seed of the resampling (the same inputs give the same interval).

    Returns:
        (low, high) in the units of ``diffs``; ``(d, d)`` when every difference is ``d``
        (scipy has no interval for a degenerate sample).
    """
    import numpy as np
    from scipy.stats import bootstrap

    x = np.asarray(diffs, dtype=float)
    if np.ptp(x) == 0:
        return float(x[0]), float(x[0])
    result = bootstrap(
        (x,),
        _mean,
        n_resamples=resamples,
        batch=BATCH,
        vectorized=True,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def permutation_p(diffs: Sequence[float], resamples: int = PERMUTATION_RESAMPLES, seed: int = 0) -> float:
    """Two-sided paired permutation test of a zero mean difference (sign flips of each difference).

    Args:
        diffs: per-item differences ``adapter - base``.
        resamples: random sign-flip patterns (the test is exact when ``2**n <= resamples``).
        seed: seed of the random patterns.

    Returns:
        The p-value; 1.0 when every difference is zero, and for a single item (its two sign
        patterns are equally extreme: the exact p-value, where scipy refuses one observation).
    """
    import numpy as np
    from scipy.stats import permutation_test

    x = np.asarray(diffs, dtype=float)
    if not x.any() or len(x) < 2:
        return 1.0
    result = permutation_test(
        (x,),
        _mean,
        permutation_type="samples",
        n_resamples=resamples,
        batch=BATCH,
        vectorized=True,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return float(result.pvalue)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def verdict(p: float, gain: float, gain_low: float, alpha: float, margin: float | None) -> Verdict:
    """``gain`` and ``gain_low`` (interval bound) are oriented so that positive is good."""
    if p < alpha and gain > 0:
        return "better"
    if margin is not None and gain_low > -margin:
        return "non-inferior"
    if p < alpha and gain < 0:
        return "worse"
    return "inconclusive"


def _decide(c: Comparison, alpha: float) -> Verdict:
    sign = 1 if c.higher_is_better else -1
    gain_low = c.ci_low if c.higher_is_better else -c.ci_high
    return verdict(c.p_value, sign * c.diff, gain_low, alpha, c.margin)


def adjust_holm(comparisons: list[Comparison], alpha: float) -> None:
    """Holm-adjust the p-values of ``comparisons`` together and decide each verdict again (in place)."""
    for c, p in zip(comparisons, holm([c.p_value for c in comparisons]), strict=True):
        c.p_value = p
        c.verdict = _decide(c, alpha)


def compare(
    metric: str,
    kind: str,
    base: list[float],
    adapter: list[float],
    alpha: float = 0.05,
    higher_is_better: bool = True,
    margin: float | None = None,
) -> Comparison:
    """Compare paired per-item scores of the base and an adapter.

    Args:
        metric: the scorer's name.
        kind: ``binary`` (exact McNemar) or ``continuous`` (paired permutation test).
        base, adapter: per-item scores, same items in the same order.
        alpha: significance level of the verdict.
        higher_is_better: the metric's direction.
        margin: non-inferiority margin in the metric's units (None: no non-inferiority verdict).

    Raises:
        ValueError: the arms differ in length or are empty.
    """
    if len(base) != len(adapter) or not base:
        raise ValueError("paired comparison needs the same non-zero number of items in both arms")
    diffs = [a - b for a, b in zip(adapter, base, strict=True)]
    improved = sum(d > 0 for d in diffs) if higher_is_better else sum(d < 0 for d in diffs)
    regressed = sum(d < 0 for d in diffs) if higher_is_better else sum(d > 0 for d in diffs)
    p = mcnemar_exact(improved, regressed) if kind == "binary" else permutation_p(diffs)
    lo, hi = bootstrap_ci(diffs)
    c = Comparison(
        metric=metric,
        kind=kind,
        base_mean=sum(base) / len(base),
        adapter_mean=sum(adapter) / len(adapter),
        diff=sum(diffs) / len(diffs),
        ci_low=lo,
        ci_high=hi,
        p_value=p,
        improved=improved,
        regressed=regressed,
        n=len(diffs),
        verdict="inconclusive",
        margin=margin,
        higher_is_better=higher_is_better,
    )
    c.verdict = _decide(c, alpha)
    return c


def judge_compare(outcomes: list[float], alpha: float = 0.05, margin: float | None = None) -> Comparison:
    """Pairwise judge outcomes per item: 1 adapter wins, 0.5 tie, 0 base wins."""
    wins = sum(o == 1 for o in outcomes)
    losses = sum(o == 0 for o in outcomes)
    rate = sum(outcomes) / len(outcomes)
    lo, hi = bootstrap_ci([o - 0.5 for o in outcomes])
    c = Comparison(
        metric="judge_win_rate",
        kind="judge",
        base_mean=0.5,
        adapter_mean=rate,
        diff=rate - 0.5,
        ci_low=lo,
        ci_high=hi,
        p_value=mcnemar_exact(wins, losses),  # the sign test: a binomial test on the non-tied items
        improved=wins,
        regressed=losses,
        n=len(outcomes),
        verdict="inconclusive",
        margin=margin,
    )
    c.verdict = _decide(c, alpha)
    return c
