"""``tuneship adapters``: check an adapter for vLLM, keep a registry, hot-load into a server."""

from __future__ import annotations

import sys

import click

from tuneship.entrypoints.cli import friendly_errors, registry_option, server_options


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
@click.option("--force", is_flag=True, help="replace an adapter of the same name")
@click.option("--base", help="the base model it will be served on (its tensors are checked against it)")
@friendly_errors
def adapters_add(name: str, source: str, registry: str, force: bool, base: str | None) -> None:
    """Copy the adapter of SOURCE (a run or adapter directory) into the registry as NAME.

    Its weights are stored as safetensors (a .bin is converted); a known wrapper prefix in its
    tensor names (torch.compile's _orig_mod.) is stripped when that is exact. Both are reported.
    """
    from tuneship.serve.registry import Registry

    base_path = None
    if base:
        from tuneship.models import resolve_base

        base_path = resolve_base(base).path
    entry = Registry(registry).add(name, source, force=force, base=base_path)
    report = entry.report
    for fix in report.fixes if report else []:
        click.echo(f"Repaired: {fix}")
    for note in report.notes if report else []:
        click.echo(f"Note: {note}", err=True)
    click.echo(f"Registered {entry.name}: {entry.path} (sha256 {entry.sha256[:12]}, base {entry.base_name})")


@adapters.command(name="list")
@server_options
@registry_option
@friendly_errors
def adapters_list(endpoint: str, api_key: str | None, registry: str) -> None:
    """What the running server serves (name, parent, content hash), and what the registry holds."""
    from tuneship.serve.control import status

    s = status(endpoint, api_key, registry)
    if s.server_error is None:
        click.echo(f"Live at {s.endpoint}:")
        for m in s.live:
            kind = f"adapter of {m.parent}" if m.parent else "base model"
            click.echo(f"  {m.name:24} {kind:32} sha256 {(m.sha256 or '?')[:12]}")
    else:
        click.echo(f"No server: {s.server_error}")
    click.echo(f"Registry {s.registry}: {len(s.adapters)} adapter(s)")
    for row in s.adapters:
        e = row.entry
        click.echo(f"  {e.name:24} sha256 {e.sha256[:12]}  base {e.base_name}  ({row.state})")


@adapters.command(name="load")
@click.argument("name")
@server_options
@registry_option
@click.option("--replace", is_flag=True, help="swap out a live adapter of the same name with other content")
@friendly_errors
def adapters_load(name: str, endpoint: str, api_key: str | None, registry: str, replace: bool) -> None:
    """Hot-load registry adapter NAME into the running server (needs its API key)."""
    from tuneship.serve.control import load

    live = load(endpoint, name, registry, api_key, replace=replace)
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


COMMANDS = (adapters,)
