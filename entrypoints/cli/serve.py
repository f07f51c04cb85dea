"""``tuneship serve``: the options come from :class:`ServeConfig`; the lifecycle is the server's."""

from __future__ import annotations

from typing import Any

import click

from tuneship.config import load_config, options_from
from tuneship.entrypoints.cli import ENV, friendly_errors
from tuneship.serve.config import ServeConfig

# Short or historic flag names of serving settings (the field's own name works too).
FLAGS = {"adapters": "--adapter", "extra_args": "--vllm-arg"}


def _ready(server: Any) -> None:
    click.echo(f"Ready at {server.url}")
    for name in server.served_names:
        click.echo(f"  model: {name}")
    for note in server.notes():
        click.echo(note)
    click.echo("Press Ctrl-C to stop.")


@click.command()
@options_from(ServeConfig, flags=FLAGS, envvars=ENV, metavars={"adapters": "NAME=PATH"})
@click.option(
    "--runtime",
    type=click.Choice(["local", "docker"]),
    default="local",
    show_default=True,
    help="run vLLM here, or in the pinned serving image through the Docker SDK",
)
@click.option("--image", help="--runtime docker: image to run (default: pinned in docker/versions.env)")
@click.option(
    "--docker-network",
    type=click.Choice(["bridge", "host"]),
    default="bridge",
    show_default=True,
    help="--runtime docker: publish the port (bridge) or share the host's network",
)
@friendly_errors
def serve(runtime: str, image: str | None, docker_network: str, **options: Any) -> None:
    """Serve the base model and LoRA adapters with vLLM (OpenAI-compatible) until Ctrl-C."""
    from tuneship.serve.server import VLLMServer

    config = load_config(ServeConfig, None, **options)
    if runtime == "docker":
        from tuneship.serve.container import DockerServer

        server: VLLMServer = DockerServer(config, image=image, network=docker_network)
        click.echo(f"Container image: {server.spec.image}")  # type: ignore[attr-defined]
    else:
        server = VLLMServer(config)
    click.echo(f"Starting vLLM (log: {server.log_path}) ...")
    server.serve_until_stopped(on_ready=_ready, on_stopping=lambda: click.echo("Stopping ..."))


COMMANDS = (serve,)
