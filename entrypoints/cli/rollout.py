"""``tuneship rollout``: a canary of a new version behind an alias, gated, promoted or aborted.

The commands work on the service's records (``--home`` / ``--database-url``, like ``tuneship
service keys create``); the service's front door sees each change within about a second.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from tuneship.config import load_config, options_from
from tuneship.entrypoints.cli import friendly_errors, server_options
from tuneship.entrypoints.cli.service import ENV
from tuneship.entrypoints.service.config import ServiceConfig
from tuneship.entrypoints.service.gate import GateSettings


def home_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--home`` and ``--database-url``: the service's records (as ``tuneship service`` has them)."""
    fn = click.option("--database-url", envvar=ENV["database_url"], show_envvar=True,
                      help="the service's records")(fn)  # fmt: skip
    return click.option("--home", envvar=ENV["home"], show_envvar=True, help="the service's home directory")(
        fn
    )


def records_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """:func:`home_options`, plus ``--actor`` and ``--reason`` for the audit."""
    fn = click.option("--reason", help="why (kept in the audit)")(fn)
    fn = click.option("--actor", help="who (kept in the audit)  [default: the OS user]")(fn)
    return home_options(fn)


@contextlib.contextmanager
def open_rollouts(home: str | None, database_url: str | None, registry: str | None = None) -> Iterator[Any]:
    """The service's :class:`~tuneship.entrypoints.service.rollout.Rollouts` (records closed after),
    on ``registry`` (a registry directory) instead of the service's own when given."""
    from tuneship.entrypoints.service.config import Paths
    from tuneship.entrypoints.service.db import connect, sessions
    from tuneship.entrypoints.service.rollout import Rollouts

    config = load_config(ServiceConfig, None, home=home, database_url=database_url)
    paths = Paths.of(config)
    engine = connect(paths.database_url(config))
    try:
        yield Rollouts(sessions(engine), registry or paths.registry)
    finally:
        engine.dispose()


def actor_of(actor: str | None) -> str:
    from tuneship.entrypoints.service.rollout import default_actor

    return actor or default_actor()


@click.group()
def rollout() -> None:
    """Canary rollouts: a share of an alias's traffic to a candidate version, then promote or abort.

    \b
    tuneship rollout start tickets --candidate tickets@3 --percent 10 --eval heldout.jsonl --run runs/t3
    tuneship rollout status tickets      # per version: requests, errors, latency; the gate
    tuneship rollout promote tickets     # only when the gate passes (--force --reason to override)
    tuneship rollout abort tickets       # all traffic back to the current version at once
    """


@rollout.command(name="start")
@click.argument("alias")
@click.option("--candidate", required=True, help="the version to roll out (ALIAS@N)")
@click.option("--percent", type=float, default=10.0, show_default=True, help="share of the alias's traffic")
@click.option(
    "--eval", "eval_file", type=click.Path(exists=True, dir_okay=False),
    help="held-out set: tuneship ab, current vs candidate, through the service (offline gate)",
)  # fmt: skip
@click.option(
    "--run", "run_dir", type=click.Path(exists=True, file_okay=False),
    help="the candidate's training run: tuneship verify checks the served candidate against it",
)  # fmt: skip
@options_from(GateSettings)
@server_options
@records_options
@friendly_errors
def rollout_start(
    alias: str, candidate: str, percent: float, eval_file: str | None, run_dir: str | None,
    endpoint: str, api_key: str | None, home: str | None, database_url: str | None,
    actor: str | None, reason: str | None, **gate_options: Any,
) -> None:  # fmt: skip
    """Send --percent of ALIAS's traffic to --candidate, sticky per end user (again: change the share).

    With --eval (and --run), the offline gate runs first, against the service at --endpoint with
    an admin key (--api-key): the candidate's A/B against the current version, and its fidelity.
    """
    from tuneship.entrypoints.service.gate import offline_checks

    settings = load_config(GateSettings, None, **gate_options)
    with open_rollouts(home, database_url) as rollouts:
        current = rollouts.check_start(alias, candidate, percent)
        gate = None
        if eval_file or run_dir or rollouts.active(alias) is None:
            if (eval_file or run_dir) and not api_key:
                raise click.ClickException(
                    "the offline gate calls the service: give an admin key (--api-key)"
                )
            home_dir = rollouts.registry.root.parent  # the service's home: reports under rollouts/
            out = home_dir / "rollouts" / f"{alias}-{time.strftime('%Y%m%d-%H%M%S')}"
            if eval_file or run_dir:
                click.echo(f"Offline gate: {current} vs {candidate} (reports in {out}) ...", err=True)
            held_out, run = (Path(p) if p else None for p in (eval_file, run_dir))
            checks = offline_checks(settings, endpoint, api_key or "", current, candidate, out, held_out, run)
            gate = {"settings": settings.model_dump(mode="json"), "offline": checks}
        started = rollouts.start(alias, candidate, percent, actor_of(actor), reason, gate)
        for check in (gate or started.gate).get("offline", []):
            click.echo(f"  {check['name']:14} {check['status']:13} {check['detail']}")
    click.echo(f"Rollout {started.seq}: {started.percent:g}% of {alias} -> {candidate}, the rest {current}")


@rollout.command(name="status")
@click.argument("alias")
@home_options
@friendly_errors
def rollout_status(alias: str, home: str | None, database_url: str | None) -> None:
    """Per version of ALIAS's rollout: requests, error rate, TTFT and latency p50/p95, tokens; the gate."""
    with open_rollouts(home, database_url) as rollouts:
        found = rollouts.active(alias) or rollouts.latest(alias)
        stats = rollouts.stats(found)
        checks, passed = _gate(found, stats)
    click.echo(f"Rollout {found.seq} of {alias} ({found.state}): {found.percent:g}% -> {found.candidate}, "
               f"the rest {found.current}; started by {found.actor}")  # fmt: skip
    click.echo(f"  {'version':16} {'requests':>8} {'errors':>7} {'TTFT p50/p95 ms':>16} "
               f"{'e2e p50/p95 ms':>16} {'out tokens':>10}")  # fmt: skip
    for s in stats.values():
        ttft = f"{_ms(s['ttft_p50_ms'])}/{_ms(s['ttft_p95_ms'])}"
        e2e = f"{_ms(s['latency_p50_ms'])}/{_ms(s['latency_p95_ms'])}"
        click.echo(f"  {s['version']:16} {s['requests']:>8} {s['error_rate']:>7.2%} {ttft:>16} {e2e:>16} "
                   f"{s['output_tokens']:>10}")  # fmt: skip
    click.echo(f"Gate: {'passes' if passed else 'does not pass'}")
    for check in checks:
        click.echo(f"  {check.name:14} {check.status:13} {check.detail}")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _gate(found: Any, stats: dict[str, dict[str, Any]]) -> tuple[list[Any], bool]:
    from tuneship.entrypoints.service.gate import rollout_gate

    return rollout_gate(found, stats)


@rollout.command(name="promote")
@click.argument("alias")
@click.option("--force", is_flag=True, help="promote although the gate does not pass (needs --reason)")
@records_options
@friendly_errors
def rollout_promote(
    alias: str, force: bool, home: str | None, database_url: str | None, actor: str | None, reason: str | None
) -> None:
    """Point ALIAS at its rollout's candidate, when the gate passes (or --force, with a --reason)."""
    if force and not (reason or "").strip():
        raise click.ClickException("--force needs a --reason (kept in the audit)")
    with open_rollouts(home, database_url) as rollouts:
        active = rollouts.active(alias)
        if active is None:
            raise click.ClickException(f"no active rollout of {alias!r}")
        checks, passed = _gate(active, rollouts.stats(active))
        if not passed and not force:
            failing = "; ".join(f"{c.name}: {c.status} ({c.detail})" for c in checks if c.status != "passed")
            raise click.ClickException(f"the gate does not pass: {failing}. --force --reason to override")
        data = {"gate": [asdict(c) for c in checks], "passed": passed, "forced": force and not passed}
        done = rollouts.finish(alias, True, actor_of(actor), reason, data)
    click.echo(
        f"Promoted: {alias} -> {done.candidate} (was {done.current})"
        + (" [forced]" if data["forced"] else "")
    )


@rollout.command(name="abort")
@click.argument("alias")
@records_options
@friendly_errors
def rollout_abort(
    alias: str, home: str | None, database_url: str | None, actor: str | None, reason: str | None
) -> None:
    """End ALIAS's rollout: all its traffic goes back to the current version at once."""
    with open_rollouts(home, database_url) as rollouts:
        done = rollouts.finish(alias, False, actor_of(actor), reason, {})
    click.echo(f"Aborted: all of {alias} -> {done.current} ({done.candidate} gets no more traffic)")


COMMANDS = (rollout,)
