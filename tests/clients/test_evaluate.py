"""Integration: eval and A/B against the shared live vLLM server through the openai client."""

import json

import pytest
from helpers import API_KEY, flaky_proxy

from tuneship.clients.config import EvalSettings, Sampling
from tuneship.clients.data import load_items
from tuneship.clients.evaluate import ab_compare, check_adapters, evaluate
from tuneship.clients.results import ABResult, EvalResult
from tuneship.errors import EvalError


@pytest.fixture
def eval_file(tmp_path, ticket_rows):
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ticket_rows[:12]))
    return path


def test_ab_of_the_trained_adapter_says_better_and_writes_every_report(live_server, ticket_rows, tmp_path):
    data = tmp_path / "eval.jsonl"
    rows = [
        {**r, "tags": ["short" if len(r["messages"][1]["content"]) < 120 else "long"]}
        for r in ticket_rows[:40]
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = EvalSettings(
        endpoint=live_server.url,
        api_key=API_KEY,
        data=str(data),
        out=str(tmp_path / "ab"),
        scorers=["chrf", "json_valid"],
        sampling=Sampling(max_tokens=24),
        latency_requests=6,
        concurrency=4,
    )
    result = ab_compare(settings, "tiny-base", ["tiny-adapter"])
    chrf = result.comparisons["tiny-adapter"][0]
    assert chrf.metric == "chrf" and chrf.n == 40 and result.primary("tiny-adapter") == chrf
    assert chrf.verdict == "better" and chrf.ci_low > 0, chrf
    # per-item counts of a weak tiny adapter are near even (19 vs 21 seen in CI); the mean and its interval decide
    assert chrf.improved > 0 and chrf.improved_examples
    assert set(result.by_tag["tiny-adapter"]) == {"short", "long"}
    assert not result.warnings, "the adapter changes outputs, so no 'not applied' warning"
    for arm in ("tiny-base", "tiny-adapter"):
        lat = result.latency[arm]
        assert lat.requests == 6 and lat.failed == 0 and lat.ttft_p50_ms > 0 and lat.e2e_p99_ms > 0
    assert result.latency_ratio["tiny-adapter"]["e2e_p50_ms"] > 0
    assert result.failing("not-better") == [] and result.failing("worse") == []
    out = tmp_path / "ab"
    results = json.loads((out / "results.json").read_text())
    assert results["schema_version"] == 2 and results["primary_metric"] == "chrf"
    assert ABResult.model_validate(results) == result.model_copy(update={"report": None})
    _validate_against_published_schema(results, "ab-results.schema.json")
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 120, "40 items x 3 arms: the base, the adapter and the base's A/A arm"
    assert {"id", "arm", "output", "scores", "tags"} <= set(samples[0])
    report = (out / "report.md").read_text()
    assert "| tiny-adapter | chrf |" in report and "TTFT p50" in report and "## By tag" in report
    page = (out / "report.html").read_text()
    assert page.startswith("<!doctype html>") and page.count("<svg") == 3 and "src=" not in page


def test_pairwise_judge_reports_win_rate_and_position_consistency(live_server, eval_file, tmp_path):
    settings = EvalSettings(
        endpoint=live_server.url,
        api_key=API_KEY,
        data=str(eval_file),
        out=str(tmp_path / "judged"),
        sampling=Sampling(max_tokens=12),
        latency_requests=0,
        judge_endpoint=live_server.url,
        judge_model="tiny-alt",
        judge_api_key=API_KEY,
    )
    result = ab_compare(settings, "tiny-base", ["tiny-adapter"])
    judged = result.comparisons["tiny-adapter"][-1]
    assert judged.metric == "judge_win_rate" and judged.kind == "judge" and judged.n == 12
    summary = result.judge["tiny-adapter"]
    assert summary.wins + summary.ties + summary.losses == 12
    assert 0 <= summary.position_consistency <= 1
    _validate_against_published_schema(
        json.loads((tmp_path / "judged" / "results.json").read_text()), "ab-results.schema.json"
    )
    assert "Judge tiny-alt on tiny-adapter" in (tmp_path / "judged" / "report.md").read_text()


def test_fail_if_gate_sets_the_exit_code(live_server, eval_file, tmp_path):
    import subprocess
    import sys

    command = [
        sys.executable,
        "-m",
        "tuneship.entrypoints.cli",
        "ab",
        "--endpoint",
        live_server.url,
        "--api-key",
        API_KEY,
    ]
    command += ["--data", str(eval_file), "--base", "tiny-base", "--adapter", "tiny-base"]
    command += ["--out", str(tmp_path / "gate"), "--max-tokens", "8", "--latency-requests", "0"]
    passing = subprocess.run([*command, "--fail-if", "worse"], capture_output=True, text=True)
    assert passing.returncode == 0, passing.stderr
    # An A/A check is two arms of the base (tests/clients/test_noise.py); the table says so.
    assert "| tiny-base (A/A) |" in passing.stdout
    assert "Noise floor (A/A): tiny-base answered twice" in passing.stdout
    assert "Server: not deterministic: vLLM's batch-invariant mode" in passing.stdout
    failing = subprocess.run([*command, "--fail-if", "not-better"], capture_output=True, text=True)
    assert failing.returncode == 1 and "--fail-if not-better: tiny-base" in failing.stderr
    assert "Traceback" not in failing.stderr


def test_eval_resumes_without_redoing_finished_items(live_server, eval_file, tmp_path):
    settings = EvalSettings(
        endpoint=live_server.url,
        api_key=API_KEY,
        data=str(eval_file),
        out=str(tmp_path / "ev"),
        sampling=Sampling(max_tokens=8),
        latency_requests=4,
    )
    answers = tmp_path / "ev" / "answers" / "tiny-base.jsonl"
    first = evaluate(settings, "tiny-base")
    lines = answers.read_text().splitlines()
    assert isinstance(first, EvalResult) and len(lines) == 12 and first.items == 12
    answers.write_text("\n".join(lines[:5]) + "\n" + lines[5][:10])  # an interrupted run, last line cut
    second = evaluate(settings, "tiny-base")
    assert len(answers.read_text().splitlines()) == 5 + 1 + 7
    assert second.scores == first.scores
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert results["latency"]["requests"] == 4 and "report" not in results
    _validate_against_published_schema(results, "eval-results.schema.json")


def test_unknown_model_and_wrong_parent_are_refused(live_server, eval_file, tmp_path):
    settings = EvalSettings(endpoint=live_server.url, api_key=API_KEY, data=str(eval_file), out=str(tmp_path))
    with pytest.raises(EvalError, match="not served"):
        evaluate(settings, "nope")
    with pytest.raises(EvalError, match="belongs to 'tiny-base', not to the base 'other'"):
        check_adapters({"other": {}, "tiny-adapter": {"parent": "tiny-base"}}, "other", ["tiny-adapter"])
    # Two adapters of one base compare with each other (the "base" named being an adapter) ...
    siblings = {"tiny-base": {}, "v1": {"parent": "tiny-base"}, "v2": {"parent": "tiny-base"}}
    check_adapters(siblings, "v1", ["v2"])
    # ... but not with an adapter of another base.
    with pytest.raises(EvalError, match="'v3' belongs to 'other', not to the base 'v1'"):
        check_adapters({**siblings, "v3": {"parent": "other"}}, "v1", ["v3"])


def test_unreachable_endpoint_is_a_clear_error(eval_file, tmp_path):
    from helpers import free_port

    settings = EvalSettings(
        endpoint=f"http://127.0.0.1:{free_port()}/v1", data=str(eval_file), out=str(tmp_path)
    )
    with pytest.raises(EvalError, match="cannot reach"):
        evaluate(settings, "tiny-base")


def test_training_formats_are_accepted_as_eval_data(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text(
        json.dumps({"prompt": "2+2?", "completion": "4"})
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "hi"}], "reference": ["a", "b"]})
        + "\n"
    )
    items = load_items(path)
    assert items[0].references == ["4"] and items[0].messages == [{"role": "user", "content": "2+2?"}]
    assert items[1].references == ["a", "b"]
    path.write_text("{bad\n")
    with pytest.raises(EvalError, match=f"{path}:1:"):
        load_items(path)


def test_a_server_that_fails_some_requests_mid_run_still_completes(live_server, eval_file, tmp_path):
    with flaky_proxy(live_server.url) as (url, stats):
        settings = EvalSettings(
            endpoint=url,
            api_key=API_KEY,
            data=str(eval_file),
            out=str(tmp_path / "flaky"),
            sampling=Sampling(max_tokens=8),
            latency_requests=0,
            concurrency=4,
        )
        summary = evaluate(settings, "tiny-base")
    assert summary.items == 12 and stats["failed"] >= 4, "the SDK retried every 503"
    answers = (tmp_path / "flaky" / "answers" / "tiny-base.jsonl").read_text().splitlines()
    assert len(answers) == 12 and len({json.loads(a)["id"] for a in answers}) == 12


def _validate_against_published_schema(results: dict, name: str) -> None:
    import jsonschema

    from tuneship.clients.results import SCHEMAS

    schema = json.loads((SCHEMAS / name).read_text())
    jsonschema.validate(results, schema, cls=jsonschema.Draft202012Validator)


def test_published_results_schemas_match_the_result_models():
    """``python -m tuneship.clients.results`` regenerates them after a model change."""
    from tuneship.clients.results import PUBLISHED, SCHEMAS, json_schema

    for name, model in PUBLISHED.items():
        assert json.loads((SCHEMAS / name).read_text()) == json_schema(model), f"{name} is stale"
    assert json_schema(ABResult) == ABResult.model_json_schema(mode="serialization")
    assert "report" not in json_schema(ABResult)["properties"]  # a path on this machine, not a result


def test_a_report_that_does_not_fit_the_schema_is_refused():
    import jsonschema

    bad = {"schema_version": 2, "model": "m", "items": "twelve", "scores": {}, "latency": None}
    with pytest.raises(jsonschema.ValidationError):
        _validate_against_published_schema(bad, "eval-results.schema.json")


def test_the_ci_gate_fails_adapters_by_their_primary_metric_verdict():
    from tuneship.clients.results import Comparison

    def comparison(metric, verdict):
        numbers = dict(base_mean=0.5, adapter_mean=0.5, diff=0, ci_low=0, ci_high=0, p_value=1)
        return Comparison(
            metric=metric, kind="binary", verdict=verdict, improved=0, regressed=0, n=1, **numbers
        )

    result = ABResult(
        base="b",
        adapters=["good", "same", "bad", "close"],
        endpoint="e",
        items=1,
        alpha=0.05,
        sampling="{}",
        primary_metric="exact",
        comparisons={
            "good": [comparison("exact", "better"), comparison("chrf", "worse")],
            "same": [comparison("exact", "inconclusive")],
            "bad": [comparison("exact", "worse")],
            "close": [comparison("exact", "non-inferior")],
        },
    )
    assert result.failing("worse") == ["bad"]
    assert result.failing("inconclusive") == ["same", "bad"]
    assert result.failing("not-better") == ["same", "bad", "close"]
    assert set(ABResult.FAIL_IF_POLICIES) == {"worse", "not-better", "inconclusive"}


def test_sdk_retries_are_on_with_the_one_default_and_off_where_a_retry_would_mislead():
    from tuneship.clients.config import RETRIES
    from tuneship.clients.runner import make_client

    assert make_client("http://127.0.0.1:1/v1", None).max_retries == RETRIES
    assert make_client("http://127.0.0.1:1/v1", None, retries=2).max_retries == 2
    assert EvalSettings(data="x").retries == RETRIES
