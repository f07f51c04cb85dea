"""Does a pairwise judge prefer longer answers? Length diagnostics and a length-controlled win rate.

A judge that prefers longer (or shorter) answers can decide an A/B on length alone: an adapter
that answers tersely and correctly loses to a verbose base. For each adapter this module measures,
on the judge's per-item outcomes (1 adapter wins in both orders, 0.5 tie or inconsistent, 0 base
wins) and the answers' lengths in characters:

- **the share of decided comparisons won by the longer answer** (decided: a winner in both answer
  orders, between answers of different length), with a two-sided exact binomial test against 1/2;
- **the Spearman correlation** between the length difference (adapter - base) and the outcome,
  over every judged item, with its p-value (``scipy.stats.spearmanr``);
- **a length-controlled win rate**, in the spirit of AlpacaEval's (Dubois et al. 2024,
  "Length-Controlled AlpacaEval"): a logistic regression of the outcome (ties as 0.5) on the
  normalised length difference, whose intercept is the win rate the judge would give at equal
  length. The difference is normalised to its sign (+1 adapter longer, -1 shorter, 0 equal), the
  limit of AlpacaEval's ``tanh(d / s)`` as the scale ``s`` shrinks. With AlpacaEval's
  ``s = sd(d)``, a judge that always names the longer answer (a step at zero) got anywhere from
  about 35% to 65% on 40 simulated items, depending on which side the small differences fell; with
  the sign it gets exactly 50%, and a judge blind to length keeps its raw rate. Answers where the
  adapter is longer and those where it is shorter weigh half each (a run where one arm is mostly
  longer is not read off its few other items); weak normal priors (scale 10 on the intercept, 2.5
  on the slope, after Gelman et al. 2008) keep the fit finite when length separates the outcomes
  perfectly. Its interval is the Wald interval of the intercept (approximate; wide when the judge
  looks at length only, since its picks then say nothing about equal-length answers). It needs at
  least ``MIN_SIDE`` items where the adapter is longer and as many where it is shorter: otherwise
  length and arm are the same thing and nothing can separate them.

**The warning rule** (``LengthBias.explains_verdict``): length explains the judge's verdict when the
judge favours one length significantly (``longer_won_p`` < alpha) and the arm it favoured (more wins
than losses, or the reverse) is the arm whose answers had the favoured length in most decided
comparisons. A real improvement that also makes answers longer can trip it too: the report then
shows the length-controlled win rate beside the raw one, and the exact metrics decide.
"""

from __future__ import annotations

from collections.abc import Sequence

from tuneship.clients.results import JudgeSummary, LengthBias

__all__ = ["length_bias", "length_controlled_win_rate", "length_warning", "longer_won"]

# Items needed on each side of equal length (adapter longer / shorter) for the regression.
MIN_SIDE = 3
# Normal prior scales of the intercept and the slope (Gelman et al. 2008's default scales for
# logistic regression on a standardised input).
PRIOR_INTERCEPT = 10.0
PRIOR_SLOPE = 2.5
Z95 = 1.959963984540054


def longer_won(outcomes: Sequence[float], diffs: Sequence[int]) -> tuple[int, int, int]:
    """Decided comparisons between answers of different length: (decided, won by the longer
    answer, won by the adapter while its answer was the longer one).

    Args:
        outcomes: per item, 1 adapter wins / 0.5 tie / 0 base wins.
        diffs: per item, adapter length - base length (characters).
    """
    decided = [(o, d) for o, d in zip(outcomes, diffs, strict=True) if o in (0.0, 1.0) and d != 0]
    longer = sum((o == 1.0) == (d > 0) for o, d in decided)
    adapter_longer = sum(d > 0 for _, d in decided)
    return len(decided), longer, adapter_longer


def length_controlled_win_rate(
    outcomes: Sequence[float], diffs: Sequence[int]
) -> tuple[float, float, float] | None:
    """The win rate implied at equal length, with an approximate 95% interval (see the module doc).

    Args:
        outcomes: per item, 1 / 0.5 / 0 (the adapter's judged outcome).
        diffs: per item, adapter length - base length.

    Returns:
        (rate, low, high) as fractions; None with fewer than ``MIN_SIDE`` items where the adapter is
        longer or fewer where it is shorter.
    """
    import numpy as np
    from scipy.optimize import minimize
    from scipy.special import expit

    y = np.asarray(outcomes, dtype=float)
    d = np.asarray(diffs, dtype=float)
    longer, shorter = int((d > 0).sum()), int((d < 0).sum())
    if min(longer, shorter) < MIN_SIDE:
        return None
    x = np.sign(d)
    # Each side of equal length weighs half of the unequal items; equal-length items weigh 1.
    half = (longer + shorter) / 2
    w = np.where(d > 0, half / longer, np.where(d < 0, half / shorter, 1.0))
    prior = np.array([PRIOR_INTERCEPT, PRIOR_SLOPE]) ** -2.0

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = theta[0] + theta[1] * x
        nll = float(np.sum(w * (np.logaddexp(0.0, z) - y * z)) + 0.5 * np.sum(prior * theta**2))
        r = w * (expit(z) - y)
        return nll, np.array([r.sum(), (r * x).sum()]) + prior * theta

    a, b = minimize(loss, np.zeros(2), jac=True, method="L-BFGS-B").x
    p = expit(a + b * x)
    v = w * p * (1 - p)
    hessian = np.array([[v.sum(), (v * x).sum()], [(v * x).sum(), (v * x * x).sum()]]) + np.diag(prior)
    se = float(np.sqrt(np.linalg.inv(hessian)[0, 0]))
    return float(expit(a)), float(expit(a - Z95 * se)), float(expit(a + Z95 * se))


def _spearman(diffs: Sequence[int], outcomes: Sequence[float]) -> tuple[float | None, float | None]:
    from scipy.stats import spearmanr

    if len(set(diffs)) < 2 or len(set(outcomes)) < 2:
        return None, None  # no correlation is defined with a constant input
    result = spearmanr(diffs, outcomes)
    return float(result.statistic), float(result.pvalue)


def length_bias(
    outcomes: Sequence[float],
    adapter_lengths: Sequence[int],
    base_lengths: Sequence[int],
    alpha: float = 0.05,
) -> LengthBias:
    """How the judge's outcomes track the answers' lengths, and whether length explains the verdict.

    Args:
        outcomes: per item, 1 adapter wins / 0.5 tie / 0 base wins.
        adapter_lengths, base_lengths: per item, the answers' lengths in characters (same order).
        alpha: significance level of the binomial test in the warning rule.

    Raises:
        ValueError: the sequences differ in length or are empty.
    """
    from scipy.stats import binomtest

    if not outcomes or not len(outcomes) == len(adapter_lengths) == len(base_lengths):
        raise ValueError("length bias needs one outcome and two lengths per item")
    diffs = [a - b for a, b in zip(adapter_lengths, base_lengths, strict=True)]
    decided, longer, adapter_longer = longer_won(outcomes, diffs)
    p = float(binomtest(longer, decided, 0.5).pvalue) if decided else None
    rho, rho_p = _spearman(diffs, outcomes)
    lc = length_controlled_win_rate(outcomes, diffs)
    wins, losses = sum(o == 1.0 for o in outcomes), sum(o == 0.0 for o in outcomes)
    # The favoured length's arm: the adapter when it was the longer answer in most decided
    # comparisons and the judge favours longer answers (or the shorter one, and shorter answers).
    favours_longer = 2 * longer > decided
    adapter_has_favoured = 2 * adapter_longer > decided if favours_longer else 2 * adapter_longer < decided
    base_has_favoured = 2 * adapter_longer < decided if favours_longer else 2 * adapter_longer > decided
    explains = (
        p is not None
        and p < alpha
        and 2 * longer != decided
        and ((wins > losses and adapter_has_favoured) or (losses > wins and base_has_favoured))
    )
    n = len(outcomes)
    return LengthBias(
        adapter_mean_length=round(sum(adapter_lengths) / n, 1),
        base_mean_length=round(sum(base_lengths) / n, 1),
        adapter_longer=sum(d > 0 for d in diffs),
        adapter_shorter=sum(d < 0 for d in diffs),
        decided=decided,
        longer_won=longer,
        longer_won_share=round(longer / decided, 4) if decided else None,
        longer_won_p=p,
        spearman_rho=None if rho is None else round(rho, 4),
        spearman_p=rho_p,
        length_controlled_win_rate=None if lc is None else round(lc[0], 4),
        length_controlled_low=None if lc is None else round(lc[1], 4),
        length_controlled_high=None if lc is None else round(lc[2], 4),
        explains_verdict=explains,
    )


def length_warning(adapter: str, summary: JudgeSummary) -> str | None:
    """The report's warning when length explains the judge's verdict on ``adapter`` (else None)."""
    bias = summary.length
    if bias is None or not bias.explains_verdict:
        return None
    side = "longer" if 2 * bias.longer_won > bias.decided else "shorter"
    won = bias.longer_won if side == "longer" else bias.decided - bias.longer_won
    favoured = f"{adapter} over the base" if summary.wins > summary.losses else f"the base over {adapter}"
    lc = bias.length_controlled_win_rate
    controlled = (
        f"length-controlled win rate {lc:.0%} [{bias.length_controlled_low:.0%}, "
        f"{bias.length_controlled_high:.0%}]"
        if lc is not None
        else "no length-controlled win rate (the adapter's answers were almost all on one side of the "
        "base's length)"
    )
    return (
        f"WARNING: the judge favours the {side} answer ({won} of {bias.decided} decided comparisons, "
        f"p = {bias.longer_won_p:.2g}) and the arm it favours mostly had the {side} answers: length "
        f"alone could explain why it prefers {favoured} ({summary.wins} wins, {summary.losses} losses; "
        f"mean length {bias.adapter_mean_length:.0f} vs {bias.base_mean_length:.0f} characters); "
        f"{controlled}. Check the exact metrics before trusting the judge"
    )
