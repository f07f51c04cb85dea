"""Reports rendered from the Jinja2 templates, without a server: content, escaping, charts."""

import json
import random

import pytest

from tuneship.clients.config import EvalSettings
from tuneship.clients.data import EvalItem
from tuneship.clients.evaluate import Arms, assemble, compare_arms, score
from tuneship.clients.report import ab_table, render_report, write_ab_report, write_eval_report
from tuneship.clients.results import ABResult, EvalResult, LatencySummary
from tuneship.clients.scorers import make_scorer


def _latency(model):
    return LatencySummary(
        model=model,
        concurrency=4,
        requests=3,
        failed=0,
        output_tokens=30,
        duration_s=1.0,
        output_throughput=30.0,
        ttft_p50_ms=12.0,
        e2e_p50_ms=100.0,
        samples_e2e_s=[0.1, 0.12, 0.15],
    )


@pytest.fixture
def ab_run(tmp_path):
    rng = random.Random(0)
    items = [
        EvalItem(f"i{k}", [{"role": "user", "content": f"q{k} <b>&"}], [f"a{k % 3}"], ["x" if k % 2 else "y"])
        for k in range(30)
    ]
    answers = {
        "base": {i.id: {"output": f"a{rng.randrange(5)}"} for i in items},
        "ad<1>": {i.id: {"output": i.references[0] if rng.random() < 0.8 else "no"} for i in items},
    }
    arms = score(Arms("base", ["ad<1>"], items, answers), [make_scorer("exact"), make_scorer("chrf")])
    settings = EvalSettings(data="unused", out=str(tmp_path))
    stats = compare_arms(settings, arms, [make_scorer("exact"), make_scorer("chrf")], 0.05)
    latency = {arm: _latency(arm) for arm in arms.names}
    result = assemble(settings, arms, stats, make_scorer("exact"), 0.05, latency)
    return result, arms


def test_ab_report_has_every_section_and_a_self_contained_page(ab_run, tmp_path):
    result, arms = ab_run
    report = write_ab_report(tmp_path, result, arms.items, arms.answers, arms.scores).read_text()
    assert report.startswith("# A/B: ad<1> vs base\n\n30 paired items")
    assert "| ad<1> | exact |" in report and "**better**" in report
    assert "## By tag (exact)" in report and "| ad<1> | x | 15 |" in report
    assert "TTFT p50" in report and "ad<1> / base: ttft_p50 1.00x" in report
    assert "### ad<1>: improved on exact" in report and "### ad<1>: regressed on exact" in report
    assert ab_table(result) in report and "\n\n\n" not in report
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!doctype html>") and page.count("<svg") == 3 and "src=" not in page
    assert "ad&lt;1&gt;" in page and "<b>" not in page, "names and answers are escaped in HTML"
    assert ABResult.model_validate_json((tmp_path / "results.json").read_text()) == result
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 60 and set(samples[0]["scores"]) == {"exact", "chrf"}


def test_eval_report_without_latency_says_so(tmp_path):
    items = [EvalItem("i", [{"role": "user", "content": "q"}], ["a"])]
    result = EvalResult(model="m", items=1, scores={"exact": 1.0})
    report = write_eval_report(tmp_path, result, items, {"i": {"output": "a"}}, {"exact": [1.0]}).read_text()
    assert "| exact | 1.000 |" in report and "(latency not measured)" in report
    assert (tmp_path / "report.html").read_text().count("<svg") == 1
    assert "report" not in json.loads((tmp_path / "results.json").read_text())


def test_templates_are_reusable_by_name():
    svg = render_report("charts.svg.j2")  # a macro library renders to (almost) nothing
    assert svg.strip() == ""
    with pytest.raises(Exception, match="nope"):
        render_report("nope.md.j2")
