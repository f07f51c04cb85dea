"""``tuneship monitor``: a canary evaluation of every live alias, once or every N minutes, with alerts.

Points and alerts go into the service's records (``--home`` / ``--database-url``, as ``tuneship
rollout`` has them); the requests go through the service's front door (``--endpoint``, a key).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from tuneship.config import load_config, options_from
from tuneship.entrypoints.cli import friendly_errors, server_options
from tuneship.entrypoints.cli.rollout import home_options
from tuneship.entrypoints.service.canary import ALERT_EXIT, CanarySettings
from tuneship.errors import TuneshipError


@click.group(invoke_without_command=True)
@click.option(
    "--eval", "eval_file", type=click.Path(exists=True, dir_okay=False),
    help=CanarySettings.model_fields["eval_file"].description,
)  # fmt: skip
@options_from(CanarySettings, exclude=("eval_file",))
@click.option("--once", is_flag=True, help=f"one check, then exit ({ALERT_EXIT} when an alert fired)")
@click.option("--every", type=float, default=15.0, show_default=True, help="minutes between checks")
@server_options
@home_options
@click.pass_context
@friendly_errors
def monitor(
    ctx: click.Context, eval_file: str | None, once: bool, every: float, endpoint: str,
    api_key: str | None, home: str | None, database_url: str | None, **options: Any,
) -> None:  # fmt: skip
    """Score a small eval set against each live alias through the service; store the series; alert.

    \b
    tuneship monitor --once --eval canary.jsonl --min-score 0.6 --max-latency-ms 2000 --api-key KEY
    tuneship monitor --every 15 --eval canary.jsonl --min-score 0.6 --webhook https://hooks.example/x
    tuneship monitor status tickets      # the recent series, newest first

    An alert (score below --min-score, latency p95 above --max-latency-ms, an evaluation that
    failed) is stored, printed as one line and POSTed as JSON to --webhook.
    """
    if ctx.invoked_subcommand is not None:
        return
    if eval_file is None:
        raise click.UsageError("Missing option '--eval' (the eval set each alias is scored on)")
    if every <= 0:
        raise click.UsageError("--every: give minutes > 0")
    settings = load_config(CanarySettings, None, eval_file=eval_file, **options)
    with open_records(home, database_url) as (sessions, registry):
        if once:
            if run_check(settings, endpoint, api_key, registry, sessions).alerts:
                ctx.exit(ALERT_EXIT)
            return
        while True:
            try:
                run_check(settings, endpoint, api_key, registry, sessions)
            except TuneshipError as e:  # no alias yet, say: the next check may find one
                click.secho(f"Warning: no check: {e}", fg="yellow", err=True)
            time.sleep(every * 60)


def run_check(
    settings: CanarySettings, endpoint: str, api_key: str | None, registry: Any, sessions: Any
) -> Any:
    """One check; each point as one line on stdout, each alert as one line on stderr."""
    from tuneship.entrypoints.service.canary import check

    outcome = check(settings, endpoint, api_key, registry, sessions, say=lambda line: click.secho(
        line, fg="red", err=True))  # fmt: skip
    for point in outcome.points:
        click.echo(point_line(point))
    return outcome


def point_line(point: Any) -> str:
    """One point as a line: alias, version, score [interval], latency p50/p95, items, errors."""
    if point.error is not None:
        return f"{point.alias:14} {point.version:16} failed: {point.error}"
    interval = "" if point.ci_low is None else f" [{point.ci_low:.3f}, {point.ci_high:.3f}]"
    return (
        f"{point.alias:14} {point.version:16} {point.metric} {point.score:.3f}{interval}  latency "
        f"p50/p95 {_ms(point.latency_p50_ms)}/{_ms(point.latency_p95_ms)} ms  {point.items} items, "
        f"{point.errors} errors"
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


@contextlib.contextmanager
def open_records(home: str | None, database_url: str | None) -> Iterator[tuple[Any, Path]]:
    """The service's records (a session factory) and its registry directory; closed after."""
    from tuneship.entrypoints.service.config import Paths, ServiceConfig
    from tuneship.entrypoints.service.db import connect, sessions

    config = load_config(ServiceConfig, None, home=home, database_url=database_url)
    paths = Paths.of(config)
    engine = connect(paths.database_url(config))
    try:
        yield sessions(engine), paths.registry
    finally:
        engine.dispose()


@monitor.command(name="status")
@click.argument("alias", required=False)
@click.option("--limit", type=int, default=20, show_default=True, help="points shown")
@home_options
@friendly_errors
def monitor_status(alias: str | None, limit: int, home: str | None, database_url: str | None) -> None:
    """The recent canary points (of ALIAS, or of every alias), newest first, and the recent alerts."""
    from datetime import datetime, timezone

    from tuneship.entrypoints.service.canary import recent_alerts, series

    def when(seconds: int) -> str:
        return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")

    with open_records(home, database_url) as (sessions, _):
        points = series(sessions, alias, limit)
        alerts = recent_alerts(sessions, alias, 5)
    if not points:
        click.echo(
            f"No canary points{f' of {alias}' if alias else ''} yet (tuneship monitor --once --eval ...)"
        )
        return
    click.echo(f"{'time (UTC)':19}  {'alias':14} {'version':16} {'metric':14} {'score':>6} {'95% CI':>15} "
               f"{'p50 ms':>7} {'p95 ms':>7} {'items':>5} {'errors':>6}")  # fmt: skip
    for p in points:
        score = "-" if p.score is None else f"{p.score:.3f}"
        ci = "-" if p.ci_low is None else f"{p.ci_low:.3f}-{p.ci_high:.3f}"
        click.echo(f"{when(p.created_at):19}  {p.alias:14} {p.version:16} {p.metric or '-':14} {score:>6} "
                   f"{ci:>15} {_ms(p.latency_p50_ms):>7} {_ms(p.latency_p95_ms):>7} {p.items:>5} "
                   f"{p.errors:>6}")  # fmt: skip
    if alerts:
        click.echo("Recent alerts:")
        for a in alerts:
            click.echo(f"  {when(a.created_at)}  {a.kind:8} {a.reason}"
                       + (f" (webhook {a.webhook})" if a.webhook else ""))  # fmt: skip


COMMANDS = (monitor,)
