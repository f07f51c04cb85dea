"""The ``tuneship`` command line: one click group, one module per command group.

Each command parses its arguments, calls one library function and prints the result.
The options of a stage's settings are generated from its settings model
(:func:`tuneship.config.options_from`). Heavy libraries (torch, transformers, peft, trl,
vllm) are imported inside the commands, so ``tuneship --help`` answers instantly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click
from pydantic import ValidationError

from tuneship import __version__
from tuneship.clients.config import DEFAULT_ENDPOINT
from tuneship.config import describe_errors
from tuneship.errors import TuneshipError
from tuneship.logs import show_messages

# Settings read from the environment, the same in every command that has them.
ENV = {
    "endpoint": "TUNESHIP_ENDPOINT",
    "api_key": "TUNESHIP_API_KEY",
    "judge_api_key": "TUNESHIP_JUDGE_API_KEY",
}


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the project's exceptions (and invalid settings) into one clear line, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TuneshipError as e:
            raise click.ClickException(str(e)) from None
        except ValidationError as e:
            raise click.ClickException(describe_errors(e)) from None

    return wrapper


def config_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--config FILE``: a YAML file of settings; flags given on the command line override it."""
    return click.option(
        "--config",
        "config_file",
        type=click.Path(exists=True, dir_okay=False),
        help="YAML file of settings (flags override it)",
    )(fn)


def registry_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--registry``: the adapter registry directory."""
    return click.option(
        "--registry",
        envvar="TUNESHIP_REGISTRY",
        default="registry",
        show_default=True,
        show_envvar=True,
        help="adapter registry directory",
    )(fn)


def server_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--endpoint`` and ``--api-key`` of a running server."""
    fn = click.option("--api-key", envvar=ENV["api_key"], show_envvar=True, help="the server's API key")(fn)
    return click.option(
        "--endpoint",
        envvar=ENV["endpoint"],
        default=DEFAULT_ENDPOINT,
        show_default=True,
        show_envvar=True,
        help="OpenAI-compatible base URL",
    )(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="tuneship")
def cli() -> None:
    """Fine-tune an LLM, export it, serve it with vLLM, and prove it beats the base.

    \b
    The whole path on the default model:   tuneship demo
    Stage by stage:
      tuneship train  --data examples/tickets/train.jsonl --name tickets
      tuneship export runs/tickets --out exports/tickets
      tuneship serve  --adapter tickets=runs/tickets/adapter
      tuneship ab     --base SmolLM2-135M-Instruct --adapter tickets --data examples/tickets/eval.jsonl
    """
    show_messages()  # the library logs; the CLI shows tuneship's messages on stderr


def main() -> None:
    cli()


# The command groups register themselves on `cli` (they import the helpers above).
from tuneship.entrypoints.cli import (  # noqa: E402
    adapters,
    capture,
    demo,
    evaluate,
    export,
    monitor,
    rollout,
    serve,
    service,
    train,
)

for _module in (train, export, adapters, capture, serve, service, rollout, monitor, evaluate, demo):
    for _command in _module.COMMANDS:
        cli.add_command(_command)

if __name__ == "__main__":
    main()
