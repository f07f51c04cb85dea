"""Pages from Jinja2 templates: the console's own, and the report templates the CLI writes with.

The loader looks in ``console/templates`` first, then in ``clients/templates``, so a console page
imports the reports' SVG charts (``charts.svg.j2``) as the CLI's ``report.html`` does.
"""

from __future__ import annotations

from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

from starlette.responses import HTMLResponse

from tuneship.clients.report import TEMPLATES as REPORT_TEMPLATES
from tuneship.clients.report import report_environment

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")
# Pages show live state (no caching); only the console's own scripts and styles run (no inline
# script, so injected markup cannot run any); no other site may frame a page (clickjacking).
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


@cache
def environment() -> Any:
    """The console's Jinja2 environment (autoescaped; the reports' filters)."""
    from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=ChoiceLoader([FileSystemLoader(TEMPLATES), FileSystemLoader(REPORT_TEMPLATES)]),
        autoescape=select_autoescape(["html", "html.j2", "svg.j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=StrictUndefined,
    )
    env.filters.update({k: report_environment().filters[k] for k in ("fmt_p", "one_line", "pct")})
    env.filters["when"] = when
    return env


def when(timestamp: int | None) -> str:
    """A Unix time as ``YYYY-MM-DD HH:MM:SS UTC``."""
    if timestamp is None:
        return "—"
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """The template ``name`` rendered as an HTML response (no caching: pages show live state)."""
    context.setdefault("viewer", None)
    context.setdefault("error", None)
    html = environment().get_template(name).render(**context)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def line_chart(
    series: dict[str, list[tuple[float, float]]], width: int = 640, height: int = 240
) -> dict[str, Any] | None:
    """An SVG line chart's geometry: each series' polyline points, and the axes' end labels.

    ``series``: name -> (x, y) points (e.g. step -> loss). None when there is nothing to draw.
    """
    points = [p for values in series.values() for p in values]
    if not points:
        return None
    left, right, top, bottom = 50, width - 10, 10, height - 30
    x_low, x_high = min(p[0] for p in points), max(p[0] for p in points)
    # The curve's own range (a loss that falls from 10.8 to 9.9 must not look flat), padded 5%.
    y_low, y_high = min(p[1] for p in points), max(p[1] for p in points)
    pad = (y_high - y_low) * 0.05 or abs(y_high) * 0.05 or 1.0
    y_low, y_high = y_low - pad, y_high + pad
    x_span, y_span = (x_high - x_low) or 1.0, (y_high - y_low) or 1.0

    def place(x: float, y: float) -> str:
        across = left + (x - x_low) / x_span * (right - left)
        return f"{across:.1f},{bottom - (y - y_low) / y_span * (bottom - top):.1f}"

    lines = [
        {
            "name": name,
            "colour": COLOURS[k % len(COLOURS)],
            "points": " ".join(place(x, y) for x, y in sorted(values)),
            "dots": [place(x, y).split(",") for x, y in sorted(values)] if len(values) < 40 else [],
            "last": sorted(values)[-1][1],
        }
        for k, (name, values) in enumerate(series.items())
        if values
    ]
    return {
        "width": width, "height": height, "left": left, "right": right, "top": top, "bottom": bottom,
        "x_low": x_low, "x_high": x_high, "y_low": y_low, "y_high": y_high, "lines": lines,
    }  # fmt: skip
