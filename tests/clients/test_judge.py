"""Judge diagnostics: judges of known bias (the stub judge service in conftest.py) on recorded answers.

A judge that always names the longer answer must get the length warning and a length-controlled
win rate near 50%; one that always names the first answer, the position warning; a fair judge
(the answer equal to the reference), neither.
"""

import json

import pytest
from helpers import API_KEY, free_port, write_rows

from tuneship.clients.config import EvalSettings
from tuneship.clients.data import EvalItem
from tuneship.clients.evaluate import Arms, assemble, compare_arms, score
from tuneship.clients.judge import check_judge, judge_pairs
from tuneship.clients.judge_bias import length_bias, length_controlled_win_rate, longer_won
from tuneship.clients.report import judge_text, write_ab_report
from tuneship.clients.results import ABResult
from tuneship.clients.scorers import make_scorer
from tuneship.errors import EvalError

N = 60


def recorded_arms() -> Arms:
    """60 items. The adapter answers exactly (the reference, 7-8 characters) on the 45 items whose
    number is not a multiple of 4, and "no idea" on the rest; the base always answers wrongly, with
    a longer answer except on 21 of the adapter's exact ones (those numbered 0-3 mod 9). So the
    adapter is shorter on most items, like a terse fine-tune against a verbose base, and among its
    exact answers length is unrelated to being right."""
    items = [
        EvalItem(f"t{k}", [{"role": "user", "content": f"ticket {k}"}], [f"queue-{k}"]) for k in range(N)
    ]
    adapter, base = {}, {}
    for k, item in enumerate(items):
        exact = k % 4 != 0
        adapter[item.id] = {"output": item.references[0] if exact else "no idea"}
        size = len(adapter[item.id]["output"])
        longer = exact and k % 9 < 4
        base[item.id] = {"output": "x" * (size - 1 - k % 3 if longer else size + 1 + k % 7)}
    return Arms("base", ["ad"], items, {"base": base, "ad": adapter})


def judged(stub_judge, judge: str, tmp_path) -> tuple[ABResult, str]:
    url, _ = stub_judge
    settings = EvalSettings(data="unused", out=str(tmp_path), judge_endpoint=url, judge_model=judge)
    scorers = [make_scorer("exact")]
    arms = score(recorded_arms(), scorers)
    stats = compare_arms(settings, arms, scorers, 0.05)
    result = assemble(settings, arms, stats, scorers[0], 0.05, {})
    report = write_ab_report(tmp_path, result, arms.items, arms.answers, arms.scores).read_text()
    return result, report


def test_the_recorded_answers_mix_lengths_independently_of_quality():
    arms = recorded_arms()
    ad, base = arms.answers["ad"], arms.answers["base"]
    longer = [len(ad[i.id]["output"]) > len(base[i.id]["output"]) for i in arms.items]
    assert sum(longer) == 21 and all(len(ad[i.id]["output"]) != len(base[i.id]["output"]) for i in arms.items)


def test_a_judge_that_prefers_longer_answers_gets_the_length_warning(stub_judge, tmp_path):
    result, report = judged(stub_judge, "longer", tmp_path)
    exact, judge_verdict = result.comparisons["ad"]
    # The story of the issue: exact answers say better, the length-loving judge says worse.
    assert exact.verdict == "better" and judge_verdict.verdict == "worse"
    j = result.judge["ad"]
    bias = j.length
    assert (j.wins, j.ties, j.losses) == (21, 0, 39) and j.position_consistency == 1.0
    assert j.picked_first == 0.5
    assert bias.decided == N and bias.longer_won == N and bias.longer_won_share == 1.0
    assert (bias.adapter_longer, bias.adapter_shorter) == (21, 39)
    assert bias.longer_won_p < 1e-12 and bias.spearman_rho > 0.8 and bias.spearman_p < 1e-6
    assert bias.explains_verdict
    # The win rate the judge would give at equal length: no preference (raw: 35%).
    assert bias.length_controlled_win_rate == pytest.approx(0.5, abs=0.01)
    assert bias.length_controlled_low < 0.35 and bias.length_controlled_high > 0.65
    warnings = [w for w in result.warnings if "length" in w]
    assert len(warnings) == 1 and len(result.warnings) == 1
    assert "favours the longer answer (60 of 60 decided comparisons" in warnings[0]
    assert "why it prefers the base over ad (21 wins, 39 losses" in warnings[0]
    assert "length-controlled win rate 50% [" in warnings[0]
    assert warnings[0] in report and "the longer answer won 60 of 60" in report
    assert "**length explains the verdict**" in report
    saved = ABResult.model_validate(json.loads((tmp_path / "results.json").read_text()))
    assert saved.judge["ad"] == j
    page = (tmp_path / "report.html").read_text()
    assert "Judge outcome by length difference" in page and "ad: lost" in page and page.count("<svg") == 3


def test_a_judge_that_always_names_the_first_answer_gets_the_position_warning(stub_judge, tmp_path):
    result, report = judged(stub_judge, "first", tmp_path)
    j = result.judge["ad"]
    assert j.position_consistency == 0.0 and j.picked_first == 1.0 and j.ties == N
    assert j.length.decided == 0 and j.length.longer_won_share is None and not j.length.explains_verdict
    assert j.length.length_controlled_win_rate == pytest.approx(0.5, abs=0.01)
    assert len(result.warnings) == 1
    assert "agreed with itself across answer orders on only 0%" in result.warnings[0]
    assert "named the answer shown first 100% of the time" in result.warnings[0]
    assert "the answer shown first was named in 100%" in report


def test_a_fair_judge_gets_no_warning_and_its_verdict_stands_at_equal_length(stub_judge, tmp_path):
    url, asked = stub_judge
    before = len(asked)
    result, report = judged(stub_judge, "fair", tmp_path)
    j = result.judge["ad"]
    assert len(asked) - before == 2 * N, "every item is judged in both answer orders"
    assert (j.wins, j.ties, j.losses) == (45, 15, 0) and j.position_consistency == 1.0
    assert j.picked_first == 0.5
    assert result.warnings == []
    assert not j.length.explains_verdict and j.length.longer_won_p > 0.05
    raw = (j.wins + j.ties / 2) / N
    assert j.length.length_controlled_win_rate == pytest.approx(raw, abs=0.1)
    assert "length explains the verdict" not in report
    assert judge_text(result) in report and judge_text(result).startswith("Judge fair on ad: 45 wins")


def test_length_alone_explains_a_loss_of_terse_correct_answers_to_verbose_wrong_ones():
    """The case that started it: exact answers, always shorter, lose to long ones. Length and arm
    are the same thing here, so no length-controlled rate is claimed; the warning still fires."""
    outcomes = [0.0] * 20
    bias = length_bias(outcomes, [8] * 20, [60 + k for k in range(20)])
    assert bias.explains_verdict and bias.longer_won == 20 and bias.adapter_shorter == 20
    assert bias.length_controlled_win_rate is None and bias.spearman_rho is None


def test_a_length_preference_against_the_lean_does_not_explain_the_verdict():
    # The judge favours longer answers (30 of 40), yet the adapter, the longer answer in 24 of the 40,
    # loses overall: of those 24 it wins 14, and it loses all 16 where it is shorter.
    outcomes = [1.0] * 14 + [0.0] * 10 + [0.0] * 16
    bias = length_bias(outcomes, [50] * 24 + [5] * 16, [20] * 24 + [30] * 16)
    assert (bias.longer_won, bias.decided) == (30, 40) and bias.longer_won_p < 0.01
    assert not bias.explains_verdict
    # When the adapter wins 20 of the 24 where it is longer and 4 of the 16 where it is shorter,
    # the judge's preference for it is the preference for length: explained.
    agreeing = [1.0] * 20 + [0.0] * 4 + [1.0] * 4 + [0.0] * 12
    bias = length_bias(agreeing, [50] * 24 + [5] * 16, [20] * 24 + [30] * 16)
    assert (bias.longer_won, bias.decided) == (32, 40) and bias.explains_verdict


def test_a_judge_that_is_down_or_does_not_serve_the_model_is_one_clear_line(stub_judge):
    url, _ = stub_judge
    check_judge(url, "fair")
    with pytest.raises(
        EvalError, match=r"^judge model 'gpt-judge' is not served at .* \(served: first, longer, fair\)$"
    ):
        check_judge(url, "gpt-judge")
    with pytest.raises(EvalError, match="^cannot reach the judge at .* \\(is it running\\?\\)$"):
        check_judge(f"http://127.0.0.1:{free_port()}/v1", "fair")
    arms = recorded_arms()
    with pytest.raises(EvalError, match="^judge gpt-judge at .* answered 400"):
        judge_pairs(arms.items[:2], arms.answers["base"], arms.answers["ad"], url, "gpt-judge", retries=0)


def test_length_statistics_on_known_numbers():
    assert longer_won([1.0, 0.0, 0.5, 1.0], [5, 3, 9, 0]) == (2, 1, 2)
    assert length_controlled_win_rate([1.0, 0.0, 1.0], [5, -3, 2]) is None  # one item shorter
    with pytest.raises(ValueError):
        length_bias([1.0], [1, 2], [3])


def test_ab_with_a_length_loving_judge_on_the_live_server_shows_the_diagnostics(
    live_server, stub_judge, ticket_rows, tmp_path
):
    """End to end: `tuneship ab` on the shared vLLM server, judged by the stub's `longer` judge."""
    from click.testing import CliRunner

    from tuneship.entrypoints.cli import cli

    url, _ = stub_judge
    data = write_rows(tmp_path / "eval.jsonl", ticket_rows[:16])
    out = tmp_path / "ab"
    args = ["ab", "--endpoint", live_server.url, "--api-key", API_KEY, "--data", str(data)]
    args += ["--base", "tiny-base", "--adapter", "tiny-adapter", "--out", str(out), "--max-tokens", "16"]
    args += ["--latency-requests", "0", "--judge-endpoint", url, "--judge-model", "longer"]
    run = CliRunner().invoke(cli, args)
    assert run.exit_code == 0, run.output
    result = ABResult.model_validate_json((out / "results.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    length = {(s["arm"], s["id"]): len(s["output"]) for s in samples}
    diffs = [length["tiny-adapter", i] - length["tiny-base", i] for i in {s["id"] for s in samples}]
    bias = result.judge["tiny-adapter"].length
    # Every pair of answers of different length is decided, for the longer one, in both orders.
    assert (bias.adapter_longer, bias.adapter_shorter) == (
        sum(d > 0 for d in diffs),
        sum(d < 0 for d in diffs),
    )
    assert bias.decided == bias.longer_won == sum(d != 0 for d in diffs) > 0
    assert f"the longer answer won {bias.decided} of {bias.decided} decided comparisons" in run.stdout
    report = (out / "report.md").read_text()
    assert judge_text(result) in report and judge_text(result) in run.stdout
    assert bias.explains_verdict == any("favours the longer answer" in w for w in result.warnings)
