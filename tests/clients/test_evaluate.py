"""Integration: eval and A/B against the shared live vLLM server through the openai client."""

import json

import pytest
from helpers import API_KEY

from tuneship.clients.data import load_items
from tuneship.clients.evaluate import EvalSettings, ab_compare, check_adapters, evaluate
from tuneship.clients.runner import Sampling
from tuneship.errors import EvalError


@pytest.fixture
def eval_file(tmp_path, ticket_rows):
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ticket_rows[:12]))
    return path


def test_ab_report_pairs_items_and_writes_markdown(live_server, eval_file, tmp_path):
    settings = EvalSettings(
        endpoint=live_server.url,
        api_key=API_KEY,
        data=str(eval_file),
        out=str(tmp_path / "ab"),
        sampling=Sampling(max_tokens=16),
    )
    result = ab_compare(settings, "tiny-base", ["tiny-adapter"])
    comparisons = result["comparisons"]["tiny-adapter"]
    assert [c["metric"] for c in comparisons] == ["json_equal", "json_fields", "json_valid"]
    assert all(c["n"] == 12 and 0 <= c["p_value"] <= 1 for c in comparisons)
    report = (tmp_path / "ab" / "report.md").read_text()
    assert "| tiny-adapter | json_equal |" in report and "scores.svg" in report
    assert (tmp_path / "ab" / "scores.svg").read_text().startswith("<svg")
    assert not result["warnings"], "the adapter changes outputs, so no 'not applied' warning"


def test_eval_resumes_without_redoing_finished_items(live_server, eval_file, tmp_path):
    settings = EvalSettings(
        endpoint=live_server.url,
        api_key=API_KEY,
        data=str(eval_file),
        out=str(tmp_path / "ev"),
        sampling=Sampling(max_tokens=8),
    )
    answers = tmp_path / "ev" / "answers" / "tiny-base.jsonl"
    first = evaluate(settings, "tiny-base")
    lines = answers.read_text().splitlines()
    assert len(lines) == 12 and first["items"] == 12
    answers.write_text("\n".join(lines[:5]) + "\n" + lines[5][:10])  # an interrupted run, last line cut
    second = evaluate(settings, "tiny-base")
    assert len(answers.read_text().splitlines()) == 5 + 1 + 7
    assert second["scores"] == first["scores"]


def test_unknown_model_and_wrong_parent_are_refused(live_server, eval_file, tmp_path):
    settings = EvalSettings(endpoint=live_server.url, api_key=API_KEY, data=str(eval_file), out=str(tmp_path))
    with pytest.raises(EvalError, match="not served"):
        evaluate(settings, "nope")
    with pytest.raises(EvalError, match="belongs to 'tiny-base', not to the base 'other'"):
        check_adapters({"other": {}, "tiny-adapter": {"parent": "tiny-base"}}, "other", ["tiny-adapter"])


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
