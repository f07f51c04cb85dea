import math

import pytest

from tuneship.clients.scorers import SCORERS, default_scorers
from tuneship.clients.stats import bootstrap_ci, compare, holm, mcnemar_exact, permutation_p


def test_mcnemar_exact_matches_the_binomial_test():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(10, 0) == pytest.approx(2 * 0.5**10)
    # 8 vs 2 discordant pairs: 2 * P(X <= 2 | n=10, p=.5) = 2 * 56 / 1024
    assert mcnemar_exact(8, 2) == pytest.approx(2 * 56 / 1024)
    assert mcnemar_exact(5, 5) == 1.0


def test_compare_binary_counts_and_verdict():
    base = [0.0] * 40 + [1.0] * 10
    adapter = [1.0] * 30 + [0.0] * 10 + [1.0] * 8 + [0.0] * 2
    c = compare("json_equal", "binary", base, adapter)
    assert (c.improved, c.regressed, c.n) == (30, 2, 50)
    assert c.diff == pytest.approx((38 - 10) / 50)
    assert c.ci_low > 0 and c.ci_high <= 1 and c.verdict == "better"
    assert c.p_value == pytest.approx(mcnemar_exact(30, 2))


def test_no_difference_is_inconclusive():
    c = compare("exact", "binary", [1.0, 0.0] * 10, [1.0, 0.0] * 10)
    assert c.p_value == 1.0 and c.verdict == "inconclusive" and c.diff == 0


def test_permutation_and_bootstrap_on_a_clear_shift():
    diffs = [0.3 + 0.01 * i for i in range(30)]
    assert permutation_p(diffs, resamples=2000) < 0.01
    lo, hi = bootstrap_ci(diffs)
    assert 0.3 < lo < hi < 0.6


def _paired_arms(n, seed=3):
    import numpy as np

    rng = np.random.default_rng(seed)
    base = rng.random(n)
    return base, base + rng.normal(0.1, 0.3, n)


def test_bootstrap_interval_equals_scipys_paired_bootstrap_of_both_arms():
    """scipy resampling the item pairs (paired=True) on both arms, with the same seed."""
    import numpy as np
    from scipy.stats import bootstrap

    base, adapter = _paired_arms(60)
    expected = bootstrap(
        (adapter, base),
        lambda a, b, axis=-1: a.mean(axis=axis) - b.mean(axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=5000,
        method="percentile",
        rng=np.random.default_rng(0),
    ).confidence_interval
    lo, hi = bootstrap_ci(list(adapter - base), resamples=5000, seed=0)
    assert (lo, hi) == pytest.approx((expected.low, expected.high), rel=1e-9)


def test_permutation_test_is_exact_for_small_samples_and_agrees_with_scipys_paired_test():
    import numpy as np
    from scipy.stats import permutation_test

    # Every difference positive: only the all-plus and all-minus sign patterns (of 2**10) are as
    # extreme as the data, so the exact two-sided p-value is 2 / 1024.
    assert permutation_p([0.3] * 10) == 2 / 1024
    assert permutation_p([0.3] * 9 + [-0.3]) == pytest.approx(2 * 11 / 1024)

    def mean_diff(a, b, axis=-1):
        return (a - b).mean(axis=axis)

    base, adapter = _paired_arms(10)  # 2**10 patterns: both tests enumerate them all
    exact = permutation_test((adapter, base), mean_diff, permutation_type="samples", vectorized=True)
    assert permutation_p(list(adapter - base)) == pytest.approx(exact.pvalue, rel=1e-9)
    base, adapter = _paired_arms(60)  # randomized: equal up to Monte Carlo error
    randomized = permutation_test(
        (adapter, base),
        mean_diff,
        permutation_type="samples",
        vectorized=True,
        n_resamples=20000,
        rng=np.random.default_rng(5),
    )
    assert permutation_p(list(adapter - base)) == pytest.approx(randomized.pvalue, abs=0.01)


def test_degenerate_samples_give_a_point_interval_without_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy warns (and returns NaN) on degenerate samples
        assert bootstrap_ci([0.2] * 10) == (0.2, 0.2)
        assert bootstrap_ci([1.0]) == (1.0, 1.0)
        assert permutation_p([0.0] * 5) == 1.0
        one = compare("exact", "binary", [0.0], [1.0])
        alone = compare("chrf", "continuous", [20.0], [35.0])  # a tag with one item (scipy refuses n=1)
    assert (one.ci_low, one.ci_high, one.p_value, one.verdict) == (1.0, 1.0, 1.0, "inconclusive")
    assert (alone.diff, alone.ci_low, alone.ci_high) == (15, 15, 15)
    assert (alone.p_value, alone.verdict) == (1.0, "inconclusive")


def test_comparisons_are_reproducible():
    base, adapter = _paired_arms(40)
    first = compare("m", "continuous", list(base), list(adapter))
    assert compare("m", "continuous", list(base), list(adapter)) == first
    assert 0 < first.p_value < 1 and first.ci_low < first.diff < first.ci_high


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_json_scorers():
    ref = ['{"category": "bug", "priority": "high", "product": "PayPilot"}']
    assert SCORERS["json_equal"]('{"product": "PayPilot", "priority": "high", "category": "bug"}', ref) == 1
    assert SCORERS["json_equal"]("```json\n" + ref[0] + "\n```", ref) == 1
    assert SCORERS["json_fields"](
        '{"category": "bug", "priority": "low", "product": "PayPilot"}', ref
    ) == pytest.approx(2 / 3)
    assert SCORERS["json_fields"]("not json", ref) == 0
    assert SCORERS["json_valid"]("[1, 2]", ref) == 1
    assert default_scorers(ref) == ["json_equal", "json_fields", "json_valid"]
    assert default_scorers(["Paris"]) == ["exact", "normalized", "rouge_l"]
    assert SCORERS["normalized"]("paris!", ["Paris"]) == 1 and SCORERS["exact"]("paris", ["Paris"]) == 0
    assert all(s.kind in ("binary", "continuous") for s in SCORERS.values())
    assert not math.isnan(SCORERS["json_fields"]("{}", ref))


def test_mcnemar_agrees_with_scipy_binomtest():
    from scipy.stats import binomtest

    for improved, regressed in [(1, 0), (7, 3), (30, 2), (12, 12), (0, 9), (50, 37)]:
        expected = binomtest(improved, improved + regressed, 0.5).pvalue
        assert mcnemar_exact(improved, regressed) == pytest.approx(expected, rel=1e-9)


def test_bootstrap_interval_covers_a_known_effect_about_95_percent_of_the_time():
    import random

    rng = random.Random(1)
    covered, trials = 0, 200
    for t in range(trials):
        diffs = [rng.gauss(0.3, 1.0) for _ in range(80)]
        lo, hi = bootstrap_ci(diffs, resamples=1000, seed=t)
        covered += lo <= 0.3 <= hi
    assert 0.90 <= covered / trials <= 0.99


def test_non_inferiority_needs_the_whole_interval_above_minus_margin():
    base = [1.0] * 50
    slightly_worse = [1.0] * 49 + [0.0]
    c = compare("exact", "binary", base, slightly_worse, margin=0.1)
    assert c.verdict == "non-inferior" and c.ci_low > -0.1
    much_worse = [0.0] * 30 + [1.0] * 20
    assert compare("exact", "binary", base, much_worse, margin=0.1).verdict == "worse"
    assert compare("exact", "binary", base, slightly_worse).verdict == "inconclusive"


def test_lower_is_better_metrics_flip_the_direction():
    c = compare(
        "errors", "continuous", [2.0 + 0.01 * i for i in range(30)], [1.0] * 30, higher_is_better=False
    )
    assert c.verdict == "better" and c.improved == 30


def test_judge_outcomes_need_both_orders_to_agree():
    from tuneship.clients.judge import outcome, parse_choice
    from tuneship.clients.stats import judge_compare

    assert outcome("A", "B") == (1.0, True)  # adapter first and chosen, base first and not chosen
    assert outcome("B", "A") == (0.0, True)
    assert outcome("A", "A") == (0.5, False)  # always the first position: a tie, inconsistent
    assert outcome("TIE", "TIE") == (0.5, True)
    assert outcome(None, "B") == (0.5, False)
    assert [parse_choice(r) for r in ("A", " b.", "Tie", "Answer A is better", "neither")] == [
        "A",
        "B",
        "TIE",
        "A",
        None,
    ]
    c = judge_compare([1.0] * 20 + [0.5] * 5 + [0.0] * 2)
    assert (c.improved, c.regressed) == (20, 2) and c.verdict == "better"
    assert c.p_value == pytest.approx(mcnemar_exact(20, 2))
    assert c.adapter_mean == pytest.approx((20 + 2.5) / 27)


def test_a_a_comparison_is_never_significant():
    scores = [1.0, 0.0, 1.0, 1.0, 0.0] * 10
    for kind in ("binary", "continuous"):
        c = compare("m", kind, scores, list(scores))
        assert c.p_value == 1.0 and c.verdict == "inconclusive"


def test_every_scorer_declares_kind_and_direction_and_scores_known_cases():
    from tuneship.clients.scorers import make_scorer

    assert all(s.kind in ("binary", "continuous") and s.higher_is_better for s in SCORERS.values())
    cases = {
        "exact": ("Paris", ["Paris"], 1.0),
        "exact:casefold,nopunct": ("paris!", ["Paris"], 1.0),
        "contains": ("It is Paris.", ["Paris"], 1.0),
        "regex:^\\d+$": ("123", ["x"], 1.0),
        "numeric:0.01": ("about 100.5", ["100"], 1.0),
        "numeric": ("about 100.5", ["100"], 0.0),
        "json_valid": ('{"a": 1}', ["x"], 1.0),
    }
    for spec, (output, refs, expected) in cases.items():
        assert make_scorer(spec)(output, refs) == expected, spec
    assert make_scorer("rouge_l")("the cat sat", ["the cat sat"]) == pytest.approx(1.0)
    assert make_scorer("bleu")("the cat sat on the mat", ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert 0 < make_scorer("chrf")("the cat sat", ["the cat sat on the mat"]) < 100
    with pytest.raises(ValueError, match="unknown scorer"):
        make_scorer("nope")


def test_json_schema_scorer(tmp_path):
    from tuneship.clients.scorers import make_scorer

    schema = tmp_path / "s.json"
    schema.write_text(
        '{"type": "object", "required": ["category"], "properties": {"category": {"enum": ["bug"]}}}'
    )
    scorer = make_scorer(f"json_schema:{schema}")
    assert scorer('{"category": "bug"}', []) == 1.0 and scorer('{"category": "x"}', []) == 0.0
    assert scorer("nope", []) == 0.0
