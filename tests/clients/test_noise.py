"""The A/B's noise floor: A/A as two arms, the floor beside every verdict, interleaved arms, and
deterministic inference where vLLM has it (refused on CPU), on the shared live vLLM server."""

import json

import httpx
import pytest
from helpers import API_KEY

from tuneship.clients.config import EvalSettings, Sampling
from tuneship.clients.evaluate import ab_compare
from tuneship.clients.noise import mark_within_noise, noise_floor
from tuneship.clients.report import ab_table
from tuneship.clients.stats import compare
from tuneship.determinism import SERVER_PATH, server_determinism, unavailable_reason

CPU_REASON = "vLLM's batch-invariant mode (VLLM_BATCH_INVARIANT) is not available on CPU"


@pytest.fixture
def eval_file(tmp_path, ticket_rows):
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ticket_rows[:12]))
    return path


def _settings(live_server, data, out, **overrides):
    values = dict(
        endpoint=live_server.url,
        api_key=API_KEY,
        data=str(data),
        out=str(out),
        scorers=["chrf", "json_valid"],
        sampling=Sampling(max_tokens=12),
        latency_requests=0,
        concurrency=4,
    )
    return EvalSettings(**{**values, **overrides})


def _answers(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_a_is_two_independent_arms_with_their_own_answers(live_server, eval_file, tmp_path):
    result = ab_compare(_settings(live_server, eval_file, tmp_path / "aa"), "tiny-base", ["tiny-base"])
    answers = tmp_path / "aa" / "answers"
    assert sorted(p.name for p in answers.iterdir()) == ["tiny-base.aa.jsonl", "tiny-base.jsonl"]
    first, second = _answers(answers / "tiny-base.jsonl"), _answers(answers / "tiny-base.aa.jsonl")
    assert len(first) == len(second) == 12 and {r["model"] for r in first + second} == {"tiny-base"}
    outputs = {r["id"]: r["output"] for r in first}
    differ = sum(outputs[r["id"]] != r["output"] for r in second)
    noise = result.noise_floor
    assert noise.arm == "tiny-base.aa" and noise.items == 12 and noise.concurrency == 4
    assert noise.answers_differ == differ and noise.difference_rate == differ / 12
    aa = result.comparisons["tiny-base"]
    assert [c.metric for c in aa] == ["chrf", "json_valid"] == list(noise.floor)
    numbers = [(c.diff, c.ci_low, c.ci_high) for c in aa]
    assert numbers == [(c.diff, c.ci_low, c.ci_high) for c in noise.comparisons]
    assert all(c.verdict == "inconclusive" and c.within_noise for c in aa)
    assert not result.warnings and result.failing("worse") == []
    # The repeat starts halfway through the items, so an item's two requests are never sent together.
    assert [r["id"] for r in sorted(second, key=lambda r: r["request"])][0] == _item_ids(eval_file)[6]
    report = (tmp_path / "aa" / "report.md").read_text()
    assert "| tiny-base (A/A) | chrf |" in report
    assert f"the answers differed on {differ} of 12 items" in report
    samples = [json.loads(line) for line in (tmp_path / "aa" / "samples.jsonl").read_text().splitlines()]
    assert {s["arm"] for s in samples} == {"tiny-base", "tiny-base.aa"}


def _item_ids(path):
    from tuneship.clients.data import load_items

    return [item.id for item in load_items(path)]


def test_every_verdict_has_the_noise_floor_beside_it_and_arms_take_turns(live_server, eval_file, tmp_path):
    result = ab_compare(_settings(live_server, eval_file, tmp_path / "ab"), "tiny-base", ["tiny-adapter"])
    noise = result.noise_floor  # on by default: this server does not report deterministic inference
    assert noise is not None and result.determinism.deterministic is False
    assert CPU_REASON in result.determinism.detail and result.determinism.device == "cpu"
    for c in result.comparisons["tiny-adapter"]:
        assert c.noise_floor == noise.floor[c.metric]
        assert c.within_noise == (abs(c.diff) <= noise.floor[c.metric])
    chrf = result.comparisons["tiny-adapter"][0]
    assert chrf.verdict == "better" and chrf.within_noise is False, (chrf, noise.floor)
    # Three arms in one pool of 4 requests: the sending order is base, adapter, A/A, base, ...
    answers = tmp_path / "ab" / "answers"
    records = [
        (r["request"], r["sent_at"], arm)
        for arm in ("tiny-base", "tiny-adapter", "tiny-base.aa")
        for r in _answers(answers / f"{arm}.jsonl")
    ]
    records.sort()
    assert [arm for _, _, arm in records] == ["tiny-base", "tiny-adapter", "tiny-base.aa"] * 12
    assert [request for request, _, _ in records] == list(range(36))
    assert [t for _, t, _ in records] == sorted(t for _, t, _ in records)
    saved = json.loads((tmp_path / "ab" / "results.json").read_text())
    assert saved["noise_floor"]["floor"] == noise.floor and saved["determinism"]["deterministic"] is False
    assert saved["comparisons"]["tiny-adapter"][0]["within_noise"] is False
    table = ab_table(result)
    assert "| noise floor | verdict |" in table and f"±{noise.floor['chrf']:.3f} | **better** |" in table
    assert f"Server: not deterministic: {CPU_REASON}" in table
    assert table in (tmp_path / "ab" / "report.md").read_text()
    assert "Noise floor (A/A)" in (tmp_path / "ab" / "report.html").read_text()


def test_noise_floor_off_runs_no_a_a_arm(live_server, eval_file, tmp_path):
    settings = _settings(live_server, eval_file, tmp_path / "off", noise_floor="off", limit=4)
    result = ab_compare(settings, "tiny-base", ["tiny-adapter"])
    assert result.noise_floor is None and result.comparisons["tiny-adapter"][0].noise_floor is None
    assert not (tmp_path / "off" / "answers" / "tiny-base.aa.jsonl").exists()
    assert "noise floor" in ab_table(result) and "Noise floor (A/A)" not in ab_table(result)


def test_an_effect_within_the_floor_is_marked_and_one_beyond_it_is_not():
    """Pure logic: the floor is the A/A interval's largest absolute bound."""
    base = [0.2, 0.4, 0.6, 0.8, 0.5, 0.3, 0.7, 0.4] * 3
    repeat = [s + (0.05 if k % 3 == 0 else -0.02 if k % 3 == 1 else 0.0) for k, s in enumerate(base)]
    aa = [compare("chrf", "continuous", base, repeat)]
    outputs = {str(k): {"output": str(s)} for k, s in enumerate(base)}
    changed = {str(k): {"output": str(s)} for k, s in enumerate(repeat)}
    noise = noise_floor("b.aa", outputs, changed, aa, concurrency=16)
    assert noise.answers_differ == 16 and noise.difference_rate == 16 / 24
    floor = noise.floor["chrf"]
    assert floor == max(abs(aa[0].ci_low), abs(aa[0].ci_high)) and 0 < floor < 0.05
    small = compare("chrf", "continuous", base, [s + floor / 2 for s in base])
    large = compare("chrf", "continuous", base, [s + 0.2 for s in base])
    judged = compare("judge_win_rate", "continuous", base, base)
    comparisons = {"small": [small, judged], "large": [large]}
    mark_within_noise(comparisons, noise.floor)
    assert small.verdict == "better" and small.within_noise is True and small.noise_floor == floor
    assert large.within_noise is False and judged.within_noise is None and judged.noise_floor is None
    # The CI gate: a "better" inside the floor proves no improvement; one beyond it does.
    from tuneship.clients.results import ABResult

    result = ABResult.model_construct(primary_metric="chrf", comparisons=comparisons)
    assert result.failing("not-better") == ["small"] and result.failing("inconclusive") == ["small"]
    assert result.failing("worse") == []


def test_batch_invariant_inference_is_where_vllm_has_it():
    assert unavailable_reason("cpu").startswith(CPU_REASON)
    assert unavailable_reason("cuda", (9, 0)) is None and unavailable_reason("cuda", (8, 0)) is None
    assert "8.0 or higher (this GPU: 7.5)" in unavailable_reason("cuda", (7, 5))
    assert unavailable_reason("rocm", arch="gfx942:sramecc+:xnack-") is None
    assert "gfx90a" in unavailable_reason("rocm", arch="gfx1100") and unavailable_reason("xpu") is None
    on = server_determinism(True, "cuda", (9, 0))
    assert on.deterministic and on.describe() == (
        "deterministic: vLLM batch-invariant inference on (VLLM_BATCH_INVARIANT=1, cuda 9.0)"
    )
    off = server_determinism(False, "cpu")
    assert off.deterministic is False and off.describe().startswith(f"not deterministic: {CPU_REASON}")


def test_serve_deterministic_is_refused_on_cpu_in_one_line(tiny_base):
    from click.testing import CliRunner

    from tuneship.entrypoints.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--base", str(tiny_base), "--deterministic", "--port", "9"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.splitlines() == [
        f"Error: --deterministic: {unavailable_reason('cpu')}; "
        "for repeatable answers here, evaluate at --concurrency 1"
    ], result.output


def test_the_server_reports_its_determinism_and_how_it_was_started(live_server, tiny_base, monkeypatch):
    url = live_server.url.removesuffix("/v1") + SERVER_PATH
    assert httpx.get(url, timeout=10).status_code == 401, "the route needs the server's key"
    report = httpx.get(url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10).json()
    assert report["deterministic"] is False and report["device"] == "cpu"
    assert report["detail"].startswith(CPU_REASON)
    assert any(n.startswith(f"Inference: not deterministic: {CPU_REASON}") for n in live_server.notes())
    # Where vLLM has the mode (a GPU it supports; detected, so faked here), serve turns it on.
    from tuneship.serve import info
    from tuneship.serve.config import ServeConfig
    from tuneship.serve.server import VLLMServer

    monkeypatch.setattr(info, "detect_device", lambda: ("cuda", (9, 0), None))
    server = VLLMServer(ServeConfig(base=str(tiny_base), deterministic=True, port=9))
    assert server.environment()["VLLM_BATCH_INVARIANT"] == "1"
    assert server.args[server.args.index("--middleware") + 1] == "tuneship.serve.info.ServerInfo"
    assert "Inference: deterministic: vLLM batch-invariant inference on" in "\n".join(server.notes())
