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
    assert default_scorers(["Paris"]) == ["exact", "normalized"]
    assert SCORERS["normalized"]("paris!", ["Paris"]) == 1 and SCORERS["exact"]("paris", ["Paris"]) == 0
    assert all(s.kind in ("binary", "continuous") for s in SCORERS.values())
    assert not math.isnan(SCORERS["json_fields"]("{}", ref))
