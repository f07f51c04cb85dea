"""The canary's time series and alerts (``tuneship monitor``'s tables), as server-side SVG charts.

Each ``monitor_points`` row is one evaluation of an alias's version; the page draws, per alias,
the primary metric's score and the latency p95 over time, one line per version, with the line
chart the job page draws its loss with, and lists the newest points and alerts.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from tuneship.entrypoints.service.canary import recent_alerts, series
from tuneship.entrypoints.service.console.access import Access
from tuneship.entrypoints.service.console.render import line_chart, page
from tuneship.entrypoints.service.console.session import Viewer

if TYPE_CHECKING:
    from tuneship.entrypoints.service.service import Service

POINTS_READ = 1000  # newest points drawn (all aliases); a check every 15 min is ten days of one alias
POINTS_LISTED = 20
ALERTS_LISTED = 20


def clock(timestamp: float) -> str:
    """A chart's time label: ``MM-DD HH:MM:SS`` UTC."""
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%m-%d %H:%M:%S")


def alias_charts(points: list[Any]) -> list[dict[str, Any]]:
    """Per alias (sorted): its score and latency-p95 charts, one line per version, time on the x axis."""
    by_alias: dict[str, dict[str, dict[str, list[tuple[float, float]]]]] = {}
    metrics: dict[str, str] = {}
    for p in points:
        lines = by_alias.setdefault(p.alias, {"score": {}, "latency": {}})
        if p.score is not None:
            lines["score"].setdefault(p.version, []).append((float(p.created_at), p.score))
            metrics.setdefault(p.alias, p.metric or "score")  # the newest point's metric
        if p.latency_p95_ms is not None:
            lines["latency"].setdefault(p.version, []).append((float(p.created_at), p.latency_p95_ms))
    charts = []
    for alias, lines in sorted(by_alias.items()):
        score, latency = (
            line_chart(dict(sorted(lines["score"].items()))),
            line_chart(dict(sorted(lines["latency"].items()))),
        )
        charts.append(
            {"alias": alias, "metric": metrics.get(alias, "score"), "score": score, "latency": latency}
        )
    return charts


def add_routes(router: APIRouter, service: Service, access: Access) -> None:
    """``/ui/monitoring`` (any key)."""

    @router.get("/monitoring")
    def monitoring(request: Request) -> Response:
        """Canary score and latency p95 per alias and version over time; the newest points and alerts."""
        viewer = access.page(request)
        if not isinstance(viewer, Viewer):
            return viewer
        points = series(service.sessions, None, POINTS_READ)
        return page(
            "monitoring.html.j2", viewer=viewer, title="Monitoring", charts=alias_charts(points),
            points=points[:POINTS_LISTED], alerts=recent_alerts(service.sessions, None, ALERTS_LISTED),
            clock=clock,
        )  # fmt: skip
