"""``tuneship adapters capture`` and ``tuneship data export --captured``: live traffic back into training.

Capture is opt-in per alias and audited like the other alias changes; the service's front door
sees a change within about a second. The export reads the service's records (``--home`` /
``--database-url``), writes a training file and runs the training preflight on it (what
``tuneship data check`` runs), and leaves a file only when training would take it.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

import click

from tuneship.config import load_config, options_from
from tuneship.entrypoints.cli import friendly_errors
from tuneship.entrypoints.cli.adapters import adapters
from tuneship.entrypoints.cli.rollout import actor_of, home_options, open_rollouts, records_options
from tuneship.entrypoints.cli.train import DATA_CHECK, data
from tuneship.train.config import TrainConfig

DAY = click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"])


@adapters.command(name="capture")
@click.argument("alias")
@click.option(
    "--on/--off", "enabled", default=None, help="store this alias's chat traffic, redacted (or stop)"
)
@records_options
@friendly_errors
def adapters_capture(
    alias: str, enabled: bool | None, home: str | None, database_url: str | None,
    actor: str | None, reason: str | None,
) -> None:  # fmt: skip
    """Capture ALIAS's chat completions (messages and answers, redacted) for training; audited.

    Without --on/--off, says whether it is on. Emails, phone and card numbers are masked before
    anything is stored; feedback on an answer: POST /v1/tuneship/feedback.
    """
    from sqlalchemy import select

    from tuneship.entrypoints.service.capture import set_capture
    from tuneship.entrypoints.service.db import AliasChange, CaptureSetting

    with open_rollouts(home, database_url) as rollouts:
        if enabled is None:
            with rollouts.sessions() as session:
                on = session.scalar(select(CaptureSetting.enabled).where(CaptureSetting.alias == alias))
            click.echo(f"Capture of {alias}: {'on' if on else 'off'}")
            return
        version = rollouts.current(alias)  # refuses an alias the registry does not have
        before = set_capture(rollouts.sessions, alias, enabled)
        with rollouts.sessions.begin() as session:
            session.add(AliasChange(alias=alias, action="capture_on" if enabled else "capture_off",
                                    from_version=version, to_version=version, actor=actor_of(actor),
                                    reason=reason, data={"capture": enabled, "before": before}))  # fmt: skip
    state = "on" if enabled else "off"
    click.echo(f"Capture of {alias}: {state}" + (" (it was already)" if before == enabled else ""))


@data.command(name="export")
@click.option(
    "--captured", "alias", required=True, metavar="ALIAS", help="the alias whose captured traffic to export"
)
@click.option("--since", type=DAY, help="captured from this UTC date or time on (YYYY-MM-DD[THH:MM:SS])")
@click.option("--until", type=DAY, help="captured before this UTC date or time")
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="the training file to write (JSONL)"
)
@click.option(
    "--dpo", is_flag=True, help="preference pairs (correction over the answer given), for --method dpo"
)
@click.option("--include-unrated", is_flag=True, help="also keep answers nobody rated or corrected")
@options_from(TrainConfig, exclude=set(TrainConfig.model_fields) - set(DATA_CHECK) | {"format"})
@home_options
@friendly_errors
def data_export(
    alias: str, since: datetime.datetime | None, until: datetime.datetime | None, out: str, dpo: bool,
    include_unrated: bool, home: str | None, database_url: str | None, **overrides: Any,
) -> None:  # fmt: skip
    """Write ALIAS's captured traffic as a chat training file, corrections as the assistant turn.

    \b
    Kept: corrected answers (the correction trains) and up-rated ones (rating 1).
    Dropped: down-rated answers without a correction, unrated ones (unless --include-unrated).
    --dpo: {prompt, chosen: correction, rejected: the answer given} pairs instead.
    Deduplicated, then checked as `tuneship data check` checks (report printed); exit 1, and
    no file, when training would not take it.
    """
    from tuneship.entrypoints.service.harvest import harvest, timestamp

    with open_rollouts(home, database_url) as rollouts:
        found = harvest(rollouts.sessions, alias, timestamp(since), timestamp(until), dpo, include_unrated)
    click.echo(found.summary())
    if not found.rows:
        raise click.ClickException(f"nothing usable to export from the captured traffic of {alias}")
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial.jsonl")
    with partial.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in found.rows)
    try:
        passed = _preflight(partial, target, overrides)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if not passed:
        partial.unlink(missing_ok=True)
        raise SystemExit(1)
    os.replace(partial, target)
    click.echo(f"Wrote {len(found.rows)} {'pairs' if dpo else 'conversations'} to {target}")


def _preflight(partial: Path, target: Path, overrides: dict[str, Any]) -> bool:
    """Run the training preflight on the written rows and print its report (naming ``target``)."""
    from rich.console import Console

    from tuneship.train.datacheck import check_data

    report = check_data(load_config(TrainConfig, None, data=str(partial), **overrides))
    report.path = str(target)  # the file it becomes
    report.problems = [p.replace(str(partial), str(target)) for p in report.problems]
    if report.example is not None:
        report.example.where = report.example.where.replace(str(partial), str(target))
    console = Console(highlight=False, soft_wrap=True)
    for line in report.render():
        console.print(line)
    return report.passed and report.examples > 0


COMMANDS: tuple = ()  # the commands join the `adapters` and `data` groups
