"""``tuneship service``: the fine-tuning jobs API and the inference front door; ``service keys create``."""

from __future__ import annotations

import signal
import sys
from typing import Any

import click

from tuneship.config import load_config, options_from
from tuneship.entrypoints.cli import friendly_errors

# The service's settings model imports nothing heavy; its flags come from it.
from tuneship.entrypoints.service.config import ServiceConfig

FLAGS = {"train_settings": "--train-setting", "backends": "--backend"}
METAVARS = {"train_settings": "NAME=VALUE", "backends": "URL[#KEY_ENVVAR]"}
ENV = {"home": "TUNESHIP_SERVICE_HOME", "database_url": "TUNESHIP_DATABASE_URL"}


@click.group(invoke_without_command=True)
@options_from(ServiceConfig, flags=FLAGS, envvars=ENV, metavars=METAVARS)
@click.pass_context
@friendly_errors
def service(ctx: click.Context, **options: Any) -> None:
    """Serve OpenAI's files and fine-tuning jobs API and the models, on one port, until Ctrl-C/SIGTERM.

    \b
    tuneship service keys create --name ops --role admin     # a key (printed once)
    tuneship service --port 8000                             # then, with the openai SDK:
      client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=KEY)
      client.files.create(file=open("train.jsonl", "rb"), purpose="fine-tune")
      client.fine_tuning.jobs.create(model=BASE, training_file=FILE_ID)
      client.chat.completions.create(model=job.fine_tuned_model, messages=[...])

    Records live in SQL (SQLite under --home by default, --database-url otherwise); each job
    trains in a `tuneship train` subprocess; the models are served by a vLLM it starts.
    """
    if ctx.invoked_subcommand is not None:
        return
    from tuneship.entrypoints.service.service import run

    config = load_config(ServiceConfig, None, **options)
    # uvicorn stops gracefully on SIGTERM, then raises it again: exit quietly, everything stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        run(config)
    except KeyboardInterrupt:
        pass


@service.group()
def keys() -> None:
    """API keys of the service (stored hashed)."""


@keys.command(name="create")
@click.option("--name", required=True, help="who or what the key is for")
@click.option(
    "--role",
    type=click.Choice(["admin", "user"]),
    default="user",
    show_default=True,
    help="admin: train and manage; user: call models",
)
@click.option("--home", envvar=ENV["home"], show_envvar=True, help="the service's home directory")
@click.option("--database-url", envvar=ENV["database_url"], show_envvar=True, help="the service's records")
@friendly_errors
def keys_create(name: str, role: str, home: str | None, database_url: str | None) -> None:
    """Create an API key and print it (once: only its hash is kept)."""
    from tuneship.entrypoints.service.config import Paths
    from tuneship.entrypoints.service.db import connect, sessions
    from tuneship.entrypoints.service.keys import create_key

    config = load_config(ServiceConfig, None, home=home, database_url=database_url)
    paths = Paths.of(config)
    engine = connect(paths.database_url(config))
    try:
        key = create_key(sessions(engine), name, role)
    finally:
        engine.dispose()
    click.echo(key)
    click.echo(
        f"Created {role} key {name!r} ({paths.database_url(config)}); it is not shown again.", err=True
    )


COMMANDS = (service,)
