"""Scheduled canary evaluation of the live aliases: a time series per alias and version, and alerts.

Every check (``tuneship monitor --once``, each tick of ``--every``, or the service's own
scheduler: ``tuneship service --monitor-every``) scores a small eval set against each alias in
the registry's ``aliases.json``, through the service's front door, with the code ``tuneship eval``
runs (its runner and scorers, :mod:`tuneship.clients`): same data formats, same scorers, the
first scorer is the primary metric (chosen from the references unless given; higher is better).
During an active rollout the alias's traffic is split, so each of its two versions is evaluated
by its own name (and the canary's requests never count in the rollout's statistics).

Each evaluation is a ``monitor_points`` row; a score under ``min_score``, a latency p95 above
``max_latency_ms`` or an evaluation that failed is a ``monitor_alerts`` row, one printed line,
and (optionally) a JSON POST to a webhook. A webhook that fails is a warning.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from tuneship.config import Settings
from tuneship.entrypoints.service.db import MonitorAlert, MonitorPoint, Rollout
from tuneship.entrypoints.service.rollout import percentile
from tuneship.errors import TuneshipError
from tuneship.serve.registry import Registry

log = logging.getLogger(__name__)
ALERT_EXIT = 3  # `tuneship monitor --once`: the exit status when an alert fired
WEBHOOK_ATTEMPTS = 3  # POSTs of one alert at most (connection errors, timeouts, 5xx)
WEBHOOK_TIMEOUT = 10.0  # seconds per POST


class CanarySettings(Settings):
    """What one canary check evaluates and when it alerts."""

    eval_file: str = Field(
        description="eval set (tuneship eval's formats: messages or prompt with references)"
    )
    scorers: list[str] = Field(
        default_factory=list,
        description="scorer (repeatable; the first is the primary metric; default: from the references)",
    )
    limit: int = Field(20, ge=1, description="first N items of the eval set per alias (small: it runs often)")
    max_tokens: int = Field(64, ge=1, description="tokens per answer")
    concurrency: int = Field(4, ge=1, description="requests in flight per alias")
    timeout: float = Field(60.0, gt=0, description="seconds per request")
    min_score: float | None = Field(
        None, description="alert when the primary metric's mean is below this (none: no score alert)"
    )
    max_latency_ms: float | None = Field(
        None, gt=0, description="alert when the answers' latency p95 (ms, end to end) is above this"
    )
    webhook: str | None = Field(None, description="URL each alert is POSTed to as JSON (optional)")


@dataclass
class Target:
    """One evaluation of a check: ``model`` is asked; it answers as ``version`` of ``alias``."""

    alias: str
    version: str
    model: str


@dataclass
class Alert:
    """Why a point alerts: ``kind`` score | latency | error, its line, the value and the threshold."""

    kind: str
    reason: str
    value: float | None = None
    threshold: float | None = None


def targets(registry: Path | str, sessions: sessionmaker) -> list[Target]:
    """The live aliases as evaluations: the alias itself, or both versions of an active rollout."""
    aliases = Registry(registry).aliases()
    with sessions() as session:
        rows = session.scalars(select(Rollout).where(Rollout.state == "active")).all()
        splits = {r.alias: (r.current, r.candidate) for r in rows}
    found = []
    for alias, version in sorted(aliases.items()):
        if alias in splits:
            found += [Target(alias, v, v) for v in splits[alias]]
        else:
            found.append(Target(alias, version, alias))
    return found


def alerts_for(point: MonitorPoint, min_score: float | None, max_latency_ms: float | None) -> list[Alert]:
    """The alerts a point raises against the thresholds (None: that check is off)."""
    name = f"{point.alias} ({point.version})"
    if point.error is not None:
        return [Alert("error", f"{name}: the canary evaluation failed: {point.error}")]
    alerts = []
    if min_score is not None and point.score is not None and point.score < min_score:
        interval = "" if point.ci_low is None else f" [95% CI {point.ci_low:.3f}, {point.ci_high:.3f}]"
        alerts.append(Alert(
            "score", f"{name}: {point.metric} {point.score:.3f}{interval} on {point.items} items is below "
            f"the minimum {min_score:g}", point.score, min_score,
        ))  # fmt: skip
    p95 = point.latency_p95_ms
    if max_latency_ms is not None and p95 is not None and p95 > max_latency_ms:
        alerts.append(Alert("latency", f"{name}: latency p95 {p95:.0f} ms is above the maximum "
                            f"{max_latency_ms:g} ms", p95, max_latency_ms))  # fmt: skip
    return alerts


@dataclass
class EvalSet:
    """The canary's items and its primary scorer (read once per check)."""

    items: list[Any]
    scorer: Any

    @classmethod
    def load(cls, settings: CanarySettings) -> EvalSet:
        """The first ``limit`` items and the first scorer (TuneshipError: bad file or scorer)."""
        from tuneship.clients.data import load_items
        from tuneship.clients.scorers import default_scorers, make_scorer

        items = load_items(settings.eval_file, settings.limit)
        specs = settings.scorers or default_scorers([r for item in items for r in item.references])
        try:
            return cls(items, make_scorer(specs[0]))
        except (ValueError, OSError) as e:
            raise TuneshipError(f"scorer: {e}") from None


def measure(
    settings: CanarySettings, endpoint: str, api_key: str | None, target: Target, evalset: EvalSet
) -> MonitorPoint:
    """Score ``target`` on the eval set through ``endpoint`` (``tuneship eval``'s runner and scorers,
    without its reports); a point.

    A failed evaluation (server unreachable, a request refused after retries) is a point with
    ``error`` set and every item counted as an error, not an exception.
    """
    from tuneship.clients.config import Sampling
    from tuneship.clients.runner import generate, list_models
    from tuneship.clients.stats import bootstrap_ci

    items = evalset.items
    point = MonitorPoint(alias=target.alias, version=target.version, model=target.model, items=len(items),
                         errors=0, metric=evalset.scorer.name)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="tuneship-canary-") as out:
        try:
            served = list_models(endpoint, api_key)
            if target.model not in served:
                raise TuneshipError(f"{target.model} is not served at {endpoint}")
            answers = generate(
                items, target.model, endpoint, Path(out) / "answers.jsonl",
                Sampling(max_tokens=settings.max_tokens), api_key, settings.concurrency, settings.timeout,
                retries=2,
            )  # fmt: skip
        except TuneshipError as e:
            point.error, point.errors = str(e), len(items)
            return point
    scores = [evalset.scorer(answers[item.id]["output"], item.references) for item in items]
    latency = [answers[item.id]["latency_s"] * 1000 for item in items]
    point.score = sum(scores) / len(scores)
    point.ci_low, point.ci_high = bootstrap_ci(scores)
    point.latency_p50_ms, point.latency_p95_ms = percentile(latency, 50), percentile(latency, 95)
    return point


def post_webhook(url: str, payload: dict[str, Any]) -> bool:
    """POST ``payload`` as JSON; retried on connection errors, timeouts and 5xx. Never raises:
    a failure is a logged warning (alerting must not stop the monitor)."""
    import httpx

    problem = ""
    with httpx.Client(transport=httpx.HTTPTransport(retries=2), timeout=WEBHOOK_TIMEOUT) as client:
        for attempt in range(WEBHOOK_ATTEMPTS):
            if attempt:
                time.sleep(0.5 * 2**attempt)
            try:
                response = client.post(url, json=payload)
            except httpx.HTTPError as e:
                problem = f"{type(e).__name__}: {e}"
                continue
            if response.status_code < 300:
                return True
            problem = f"it answered {response.status_code}"
            if response.status_code < 500:
                break  # the endpoint refuses this alert; sending it again changes nothing
    log.warning("Webhook %s: the alert was not delivered (%s)", url, problem)
    return False


def webhook_payload(point: MonitorPoint, alert: Alert) -> dict[str, Any]:
    """The JSON an alert's webhook receives: what fired, why, and the point's measurements."""
    return {
        "source": "tuneship monitor", "kind": alert.kind, "reason": alert.reason,
        "alias": point.alias, "version": point.version, "value": alert.value,
        "threshold": alert.threshold, "metric": point.metric, "score": point.score,
        "ci_low": point.ci_low, "ci_high": point.ci_high, "latency_p50_ms": point.latency_p50_ms,
        "latency_p95_ms": point.latency_p95_ms, "items": point.items, "errors": point.errors,
        "created_at": point.created_at,
    }  # fmt: skip


@dataclass
class Outcome:
    """What one check did: its points and, per point, the alerts it raised."""

    points: list[MonitorPoint]
    alerts: list[tuple[MonitorPoint, Alert]]


def check(
    settings: CanarySettings,
    endpoint: str,
    api_key: str | None,
    registry: Path | str,
    sessions: sessionmaker,
    say: Callable[[str], None] = log.warning,
) -> Outcome:
    """Evaluate every live alias once; store the points and alerts; ``say`` each alert's line.

    Raises:
        TuneshipError: the eval set cannot be read, or no alias is registered.
    """
    evalset = EvalSet.load(settings)
    found = targets(registry, sessions)
    if not found:
        raise TuneshipError(f"no alias in the registry {registry}: nothing to monitor")
    outcome = Outcome([], [])
    for target in found:
        point = measure(settings, endpoint, api_key, target, evalset)
        raised = alerts_for(point, settings.min_score, settings.max_latency_ms)
        rows = [MonitorAlert(alias=point.alias, version=point.version, kind=a.kind, reason=a.reason,
                             value=a.value, threshold=a.threshold) for a in raised]  # fmt: skip
        with sessions.begin() as session:
            session.add(point)
            session.flush()
            for row in rows:
                row.point_id = point.seq
                row.created_at = point.created_at
                session.add(row)
        outcome.points.append(point)
        for alert, row in zip(raised, rows, strict=True):
            say(f"ALERT {alert.reason}")
            outcome.alerts.append((point, alert))
            if settings.webhook:
                sent = post_webhook(settings.webhook, webhook_payload(point, alert))
                with sessions.begin() as session:
                    stored = session.get(MonitorAlert, row.seq)
                    if stored is not None:
                        stored.webhook = "sent" if sent else "failed"
    return outcome


def series(sessions: sessionmaker, alias: str | None = None, limit: int = 20) -> list[MonitorPoint]:
    """The newest points (of ``alias``, or of every alias), newest first."""
    query = select(MonitorPoint).order_by(MonitorPoint.seq.desc()).limit(limit)
    if alias:
        query = query.where(MonitorPoint.alias == alias)
    with sessions() as session:
        return list(session.scalars(query))


def recent_alerts(sessions: sessionmaker, alias: str | None = None, limit: int = 10) -> list[MonitorAlert]:
    """The newest alerts (of ``alias``, or of every alias), newest first."""
    query = select(MonitorAlert).order_by(MonitorAlert.seq.desc()).limit(limit)
    if alias:
        query = query.where(MonitorAlert.alias == alias)
    with sessions() as session:
        return list(session.scalars(query))


class Scheduler(threading.Thread):
    """The service's own canary: a check every ``every_s`` seconds once ``ready`` is set, until
    ``stop`` is set (its owner, the service, sets it and joins the thread)."""

    def __init__(self, run_check: Callable[[], Any], every_s: float, ready: threading.Event,
                 stop: threading.Event) -> None:  # fmt: skip
        super().__init__(name="tuneship-canary", daemon=True)
        self.run_check, self.every_s, self.ready, self.stop = run_check, every_s, ready, stop

    def run(self) -> None:
        while not self.stop.is_set() and not self.ready.wait(1.0):
            pass
        while not self.stop.is_set():
            try:
                self.run_check()
            except Exception as e:  # noqa: BLE001 (a failed check is logged; the next one runs)
                log.warning("Canary check failed: %s", e)
            if self.stop.wait(self.every_s):
                return
