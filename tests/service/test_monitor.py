"""Scheduled canary evaluation (`tuneship monitor`, `tuneship service --monitor-every`) against one real
`tuneship service` whose own scheduler runs every 6 s; alerts reach a real local webhook server.

The eval sets' scores do not depend on what the (random) tiny model answers: with the ``regex``
scorer an empty reference matches any answer and ``(?!)`` none, so the score is the share of
empty references.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import CLI, make_adapter, write_rows
from service.conftest import Service

ALIAS = "tickets"
NEVER = "(?!)"  # a pattern that matches nothing
CANARY_ROWS = [{"prompt": f"Ticket {i}: my order never arrived.", "reference": ""} for i in range(3)] + [
    {"prompt": f"Ticket {i}: I was charged twice.", "reference": NEVER} for i in range(3, 5)
]  # 3 of 5 match: score 0.6


# --- units: no server ---------------------------------------------------------------------------


def point(**fields):
    from tuneship.entrypoints.service.db import MonitorPoint

    values = {"alias": "a", "version": "a@1", "model": "a", "metric": "exact", "score": 0.5,
              "ci_low": 0.2, "ci_high": 0.8, "latency_p50_ms": 100.0, "latency_p95_ms": 300.0,
              "items": 20, "errors": 0, "error": None}  # fmt: skip
    return MonitorPoint(**{**values, **fields})


def test_thresholds_decide_the_alerts():
    from tuneship.entrypoints.service.canary import alerts_for

    assert alerts_for(point(), None, None) == []  # no thresholds: no alerts
    assert alerts_for(point(), 0.5, 300.0) == []  # at the threshold is not past it
    low, slow = alerts_for(point(score=0.4), 0.5, 250.0)
    assert (low.kind, low.value, low.threshold) == ("score", 0.4, 0.5)
    assert low.reason == "a (a@1): exact 0.400 [95% CI 0.200, 0.800] on 20 items is below the minimum 0.5"
    assert (slow.kind, slow.value, slow.threshold) == ("latency", 300.0, 250.0)
    assert slow.reason == "a (a@1): latency p95 300 ms is above the maximum 250 ms"
    failed = alerts_for(point(score=None, error="cannot reach http://x/v1"), 0.5, 250.0)
    assert [(a.kind, a.reason) for a in failed] == [
        ("error", "a (a@1): the canary evaluation failed: cannot reach http://x/v1")
    ]


def test_a_failing_webhook_is_a_warning_not_a_crash(caplog):
    from helpers import free_port

    from tuneship.entrypoints.service.canary import post_webhook

    assert post_webhook(f"http://127.0.0.1:{free_port()}/hook", {"kind": "score"}) is False
    assert "the alert was not delivered" in caplog.text


def test_a_bad_eval_set_or_scorer_is_one_clear_line(tmp_path):
    from click.testing import CliRunner

    from tuneship.entrypoints.cli import cli

    data = write_rows(tmp_path / "canary.jsonl", CANARY_ROWS)
    args = ["monitor", "--once", "--home", str(tmp_path / "home"), "--eval", str(data)]
    bad = CliRunner().invoke(cli, [*args, "--scorers", "nope"])
    assert bad.exit_code == 1 and bad.output.startswith("Error: scorer: unknown scorer 'nope'")
    empty = CliRunner().invoke(cli, args)  # a home without aliases
    assert empty.exit_code == 1 and "Error: no alias in the registry" in empty.output


# --- the service --------------------------------------------------------------------------------


class Hook(ThreadingHTTPServer):
    """A local alerting endpoint: keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(handler) -> None:  # noqa: N802, N805 (http.server's names)
                length = int(handler.headers["Content-Length"])
                self.received.append(json.loads(handler.rfile.read(length)))
                handler.send_response(204)
                handler.end_headers()

            def log_message(handler, *args) -> None:  # noqa: N805
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/alerts"


@pytest.fixture(scope="module")
def hook():
    server = Hook()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def service(tiny_base, tmp_path_factory):
    """A service whose scheduler scores 2 items against every live alias every 6 s (an impossible
    --monitor-min-score, so each of its points alerts)."""
    work = tmp_path_factory.mktemp("monitored")
    scheduled = write_rows(
        work / "scheduled.jsonl", [{"prompt": "Where is my parcel?", "reference": "x"}] * 2
    )
    running = Service(work / "home", tiny_base, work / "service.log", extra_args=(
        "--monitor-every", "0.1", "--monitor-eval", str(scheduled), "--monitor-limit", "2",
        "--monitor-min-score", "2",
    ))  # fmt: skip
    running.start()
    yield running
    if running.process is not None:
        assert running.stop() == []


@pytest.fixture(scope="module")
def versions(service, tiny_base, tmp_path_factory):
    """tickets@1 and tickets@2 in the service's registry (the alias points at tickets@1)."""
    work = tmp_path_factory.mktemp("versions")
    registry = str(service.home / "registry")
    for seed in (1, 2):
        adapter = make_adapter(tiny_base, work / f"seed{seed}", seed=seed)
        done = subprocess.run([*CLI, "adapters", "add", ALIAS, str(adapter), "--registry", registry],
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
    service.wait_ready()
    return [f"{ALIAS}@1", f"{ALIAS}@2"]


@pytest.fixture(scope="module")
def canary_file(tmp_path_factory):
    return write_rows(tmp_path_factory.mktemp("canary") / "canary.jsonl", CANARY_ROWS)


def monitor(service, *args: str) -> subprocess.CompletedProcess:
    """`tuneship monitor` as a user runs it against the service (its records, its front door)."""
    extra = ["--home", str(service.home), "--endpoint", service.url, "--api-key", service.user_key]
    return subprocess.run([*CLI, "monitor", *args, *extra], capture_output=True, text=True, timeout=300)


def rows(service, query: str, *params) -> list[sqlite3.Row]:
    with sqlite3.connect(service.home / "tuneship.db") as db:
        db.row_factory = sqlite3.Row
        return db.execute(query, params).fetchall()


def test_a_check_stores_a_point_per_live_alias_with_its_score(service, versions, canary_file):
    from tuneship.clients.stats import bootstrap_ci

    done = monitor(service, "--once", "--eval", str(canary_file), "--scorers", "regex", "--concurrency", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    (mine,) = rows(service, "SELECT * FROM monitor_points WHERE items = 5")
    assert (mine["alias"], mine["version"], mine["model"]) == (ALIAS, "tickets@1", ALIAS)
    assert (mine["metric"], mine["score"], mine["errors"], mine["error"]) == ("regex", 0.6, 0, None)
    assert (mine["ci_low"], mine["ci_high"]) == pytest.approx(bootstrap_ci([1, 1, 1, 0, 0]))
    assert 0 < mine["latency_p50_ms"] <= mine["latency_p95_ms"] < 60_000
    assert abs(mine["created_at"] - time.time()) < 120
    assert f"{ALIAS:14} tickets@1        regex 0.600" in done.stdout
    assert not rows(service, "SELECT * FROM monitor_alerts WHERE point_id = ?", mine["seq"])


def test_a_threshold_it_cannot_meet_alerts_records_and_calls_the_webhook(
    service, versions, canary_file, hook
):
    done = monitor(service, "--once", "--eval", str(canary_file), "--scorers", "regex", "--limit", "4",
                   "--min-score", "0.9", "--max-latency-ms", "0.001", "--webhook", hook.url)  # fmt: skip
    assert done.returncode == 3, done.stdout + done.stderr
    (mine,) = rows(service, "SELECT * FROM monitor_points WHERE items = 4")
    assert mine["score"] == 0.75  # 3 of the first 4 items
    alerts = rows(service, "SELECT * FROM monitor_alerts WHERE point_id = ? ORDER BY seq", mine["seq"])
    assert [(a["kind"], a["value"], a["threshold"], a["webhook"]) for a in alerts] == [
        ("score", 0.75, 0.9, "sent"), ("latency", mine["latency_p95_ms"], 0.001, "sent"),
    ]  # fmt: skip
    assert alerts[0]["reason"].startswith("tickets (tickets@1): regex 0.750 [95% CI ")
    assert f"ALERT {alerts[0]['reason']}" in done.stderr.splitlines()
    assert f"ALERT {alerts[1]['reason']}" in done.stderr.splitlines()
    sent = [h for h in hook.received if h["items"] == 4]
    assert [h["kind"] for h in sent] == ["score", "latency"]
    assert {k: sent[0][k] for k in ("source", "alias", "version", "metric", "score", "value", "threshold",
                                    "reason", "errors", "created_at")} == {
        "source": "tuneship monitor", "alias": ALIAS, "version": "tickets@1", "metric": "regex",
        "score": 0.75, "value": 0.75, "threshold": 0.9, "reason": alerts[0]["reason"], "errors": 0,
        "created_at": mine["created_at"],
    }  # fmt: skip


def test_during_a_rollout_each_version_is_evaluated_by_its_name(service, versions, canary_file):
    started = subprocess.run([*CLI, "rollout", "start", ALIAS, "--candidate", "tickets@2", "--percent", "50",
                              "--home", str(service.home)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert started.returncode == 0, started.stderr
    done = monitor(service, "--once", "--eval", str(canary_file), "--scorers", "regex", "--limit", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    mine = rows(service, "SELECT * FROM monitor_points WHERE items = 3 ORDER BY seq")
    assert [(p["alias"], p["version"], p["model"], p["score"]) for p in mine] == [
        (ALIAS, "tickets@1", "tickets@1", 1.0), (ALIAS, "tickets@2", "tickets@2", 1.0),
    ]  # fmt: skip
    # The canary's requests named the versions: none counts in the rollout's live statistics.
    assert not rows(service, "SELECT * FROM request_records WHERE rollout_id IS NOT NULL")
    status = subprocess.run([*CLI, "monitor", "status", ALIAS, "--home", str(service.home)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert "tickets@2        regex" in status.stdout and "Recent alerts:" in status.stdout


def test_the_service_scheduler_stores_points_on_its_own(service, versions):
    deadline = time.monotonic() + 90
    query = "SELECT * FROM monitor_points WHERE items = 2 AND version = 'tickets@1' ORDER BY seq"
    while len(scheduled := rows(service, query)) < 2:  # one a check (two during the rollout)
        assert time.monotonic() < deadline, service.log.read_text()[-3000:]
        time.sleep(1)
    first, second = scheduled[-2:]
    assert first["alias"] == ALIAS and first["metric"] == "exact" and first["score"] == 0.0
    assert 0 < second["created_at"] - first["created_at"] < 30  # every 6 s, plus the check itself
    alert = rows(service, "SELECT * FROM monitor_alerts WHERE point_id = ?", first["seq"])
    assert [(a["kind"], a["threshold"], a["webhook"]) for a in alert] == [("score", 2.0, None)]
