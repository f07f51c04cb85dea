"""``tuneship demo``: the whole path on the default model."""

from __future__ import annotations

from pathlib import Path

import click

from tuneship.entrypoints.cli import friendly_errors


@click.command()
@click.option(
    "--workdir",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False),
    help="where runs/, exports/ and reports/ go",
)
@click.option("--max-steps", default=None, type=int, help="training steps (default: from the demo preset)")
@click.option("--port", default=8011, show_default=True, help="port for the demo's vLLM server")
@friendly_errors
def demo(workdir: str, max_steps: int | None, port: int) -> None:
    """Run the whole path on the default model and the support-ticket example."""
    from tuneship.entrypoints.demo import run_demo

    run_demo(Path(workdir), max_steps=max_steps, port=port)


COMMANDS = (demo,)
