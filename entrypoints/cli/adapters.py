"""``tuneship adapters``: check an adapter for vLLM, keep a registry, hot-load into a server."""

from __future__ import annotations

import sys

import click

from tuneship.entrypoints.cli import friendly_errors, registry_option, server_options
from tuneship.entrypoints.cli.rollout import actor_of, home_options, open_rollouts, records_options


@click.group()
def adapters() -> None:
    """LoRA adapters: check them for vLLM, keep them in a registry, hot-load them into a server."""


@adapters.command(name="check")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--base", help="the base model it will be served on (checked against the adapter's lineage)")
@friendly_errors
def adapters_check(path: str, base: str | None) -> None:
    """Report whether vLLM can serve the adapter at PATH (a run or adapter directory), and why not.

    Its tensors are checked against --base, else the base its lineage names (when at hand).
    Exits 1 when vLLM cannot serve the directory as it is.
    """
    from tuneship.adapters import check_adapter, locate_adapter

    resolved = None
    if base:
        from tuneship.models import resolve_base

        resolved = resolve_base(base)
    report = check_adapter(
        locate_adapter(path),
        resolved.weights_sha256 if resolved else None,
        base=resolved.path if resolved else None,
    )
    click.echo(report.render())
    if not report.ok:
        sys.exit(1)


@adapters.command(name="add")
@click.argument("name")
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@registry_option
@click.option("--promote", "--force", "promote", is_flag=True, hidden=True)
@click.option("--base", help="the base model it will be served on (its tensors are checked against it)")
@friendly_errors
def adapters_add(name: str, source: str, registry: str, promote: bool, base: str | None) -> None:
    """Add the adapter of SOURCE (a run or adapter directory) to the registry as the next version NAME@N.

    A version is never rewritten. The first version creates the alias NAME; later ones leave it
    where it is until `tuneship adapters promote NAME@N` (or a rollout) moves it, with an audit
    record. Adding the content of the newest version again adds nothing. Weights are stored as
    safetensors (a .bin is converted); a known wrapper prefix in tensor names (torch.compile's
    _orig_mod.) is stripped when that is exact. Both are reported.
    """
    from tuneship.serve.registry import Registry

    if promote:
        raise click.UsageError(
            "adapters add never moves an alias (versions are never replaced): add the version, then "
            f"move {name} with `tuneship adapters promote {name}@N --reason ...` (kept in the audit)"
        )
    base_path = None
    if base:
        from tuneship.models import resolve_base

        base_path = resolve_base(base).path
    reg = Registry(registry)
    before = reg.aliases().get(name)
    entry = reg.add(name, source, base=base_path)
    report = entry.report
    for fix in report.fixes if report else []:
        click.echo(f"Repaired: {fix}")
    for note in report.notes if report else []:
        click.echo(f"Note: {note}", err=True)
    now = reg.aliases().get(name)
    if before is None:
        alias = f"alias {name} -> {now} (new)"
    elif now == entry.name:
        alias = f"alias {name} -> {now}"
    else:
        alias = f"alias {name} -> {now} (promote it with: tuneship adapters promote {entry.name})"
    if entry.added:
        what = f"{entry.path} (sha256 {entry.sha256[:12]}, base {entry.base_name})"
        click.echo(f"Registered {entry.name}: {what}; {alias}")
    else:
        click.echo(f"unchanged: {entry.name} has this content (sha256 {entry.sha256[:12]}); {alias}")


@adapters.command(name="list")
@server_options
@registry_option
@friendly_errors
def adapters_list(endpoint: str, api_key: str | None, registry: str) -> None:
    """What the running server serves (name, parent, content hash), and what the registry holds."""
    from tuneship.serve.control import status
    from tuneship.serve.registry import Registry

    s = status(endpoint, api_key, registry)
    if s.server_error is None:
        click.echo(f"Live at {s.endpoint}:")
        for m in s.live:
            kind = f"adapter of {m.parent}" if m.parent else "base model"
            kind = f"alias of {m.version}" if m.version else kind
            click.echo(f"  {m.name:24} {kind:32} sha256 {(m.sha256 or '?')[:12]}")
    else:
        click.echo(f"No server: {s.server_error}")
    aliases = Registry(registry).aliases()
    marks: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        marks.setdefault(version, []).append(alias)
    click.echo(f"Registry {s.registry}: {len(s.adapters)} adapter(s), {len(aliases)} alias(es)")
    for row in s.adapters:
        e = row.entry
        mark = f"  <- {', '.join(marks[e.name])}" if e.name in marks else ""
        click.echo(f"  {e.name:24} sha256 {e.sha256[:12]}  base {e.base_name}  ({row.state}){mark}")


@adapters.command(name="load")
@click.argument("name")
@server_options
@registry_option
@click.option("--replace", is_flag=True, hidden=True, help="no longer needed (versions are immutable)")
@friendly_errors
def adapters_load(name: str, endpoint: str, api_key: str | None, registry: str, replace: bool) -> None:
    """Hot-load registry version NAME@N, plain entry NAME, or alias NAME's version (needs the API key)."""
    from tuneship.serve.control import load

    if replace:
        click.echo("Note: --replace is not needed: each version is loaded under its own name", err=True)
    live = load(endpoint, name, registry, api_key)
    click.echo(f"Loaded {live.name} (parent {live.parent}, sha256 {(live.sha256 or '?')[:12]})")


@adapters.command(name="unload")
@click.argument("name")
@server_options
@friendly_errors
def adapters_unload(name: str, endpoint: str, api_key: str | None) -> None:
    """Unload adapter NAME from the running server (needs its API key)."""
    from tuneship.serve.control import unload

    unload(endpoint, name, api_key)
    click.echo(f"Unloaded {name}")


service_registry_option = click.option(
    "--registry",
    "registry_dir",
    type=click.Path(file_okay=False),
    help="the adapter registry  [default: the service's, HOME/registry]",
)


@adapters.command(name="promote")
@service_registry_option
@click.argument("version")
@records_options
@friendly_errors
def adapters_promote(
    version: str,
    registry_dir: str | None,
    home: str | None,
    database_url: str | None,
    actor: str | None,
    reason: str | None,
) -> None:
    """Point the alias of VERSION (tickets@3) at it (in the service's registry unless --registry); audited."""
    with open_rollouts(home, database_url, registry_dir) as rollouts:
        moved = rollouts.promote(version, actor_of(actor), reason)
    click.echo(f"Promoted: {moved.alias} -> {moved.after} (was {moved.before})")


@adapters.command(name="rollback")
@service_registry_option
@click.argument("alias")
@records_options
@friendly_errors
def adapters_rollback(
    alias: str,
    registry_dir: str | None,
    home: str | None,
    database_url: str | None,
    actor: str | None,
    reason: str | None,
) -> None:
    """Point ALIAS back at the version it had before the current one (from the audit); audited."""
    with open_rollouts(home, database_url, registry_dir) as rollouts:
        moved = rollouts.rollback(alias, actor_of(actor), reason)
    click.echo(f"Rolled back: {moved.alias} -> {moved.after} (was {moved.before})")


@adapters.command(name="history")
@service_registry_option
@click.argument("alias")
@click.option("--limit", type=int, default=50, show_default=True, help="changes shown, newest first")
@home_options
@friendly_errors
def adapters_history(
    alias: str, registry_dir: str | None, limit: int, home: str | None, database_url: str | None
) -> None:
    """Who moved ALIAS, when, from which version to which, and why (newest first)."""
    import datetime

    with open_rollouts(home, database_url, registry_dir) as rollouts:
        changes = rollouts.history(alias, limit)
    if not changes:
        click.echo(f"No changes of {alias} recorded")
    for c in changes:
        when = datetime.datetime.fromtimestamp(c.created_at, datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%SZ"
        )
        moved = f"{c.from_version or '-'} -> {c.to_version or '-'}"
        click.echo(f"{when}  {c.actor:12} {c.action:16} {moved:28} {c.reason or ''}")


COMMANDS = (adapters,)
