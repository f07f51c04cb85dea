"""``tuneship eval``, ``ab`` and ``verify``: options from ``EvalSettings`` and ``FidelitySettings``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from tuneship.clients.config import FAIL_IF_POLICIES, EvalSettings
from tuneship.config import load_config, options_from
from tuneship.entrypoints.cli import ENV, friendly_errors
from tuneship.entrypoints.config import FidelitySettings

# Short or historic flag names of evaluation settings (the field's own name works too).
FLAGS = {"scorers": "--scorer"}
# Settings only an A/B comparison uses.
AB_ONLY = ("margin", "noise_floor", "judge_endpoint", "judge_model", "judge_api_key")


def eval_options(
    out: str, exclude: tuple[str, ...] = ()
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The EvalSettings options; ``--out``'s default depends on the command, so it is its own."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = options_from(EvalSettings, exclude=("out", *exclude), flags=FLAGS, envvars=ENV)(fn)
        return click.option("--out", help=f"report directory  [default: {out}]")(fn)

    return decorate


@click.command(name="eval")
@click.option("--model", required=True, help="served model name to evaluate")
@eval_options("reports/MODEL", exclude=AB_ONLY)
@friendly_errors
def eval_(model: str, out: str | None, **options: Any) -> None:
    """Score one served model on evaluation data through the OpenAI API."""
    from tuneship.clients.evaluate import evaluate

    settings = load_config(EvalSettings, None, out=out or f"reports/{model}", **options)
    summary = evaluate(settings, model)
    for metric, value in summary.scores.items():
        click.echo(f"{metric:>12}: {value:.3f}")
    click.echo(f"Report: {summary.report}")


@click.command()
@click.option("--base", required=True, help="served name of the base model")
@click.option(
    "--adapter",
    "adapters",
    multiple=True,
    required=True,
    help="served adapter name (repeatable; the base's own name runs an A/A check)",
)
@click.option("--alpha", default=0.05, show_default=True, help="significance level")
@click.option(
    "--fail-if",
    type=click.Choice(list(FAIL_IF_POLICIES)),
    help="exit 1 when an adapter's primary-metric verdict is this (a CI gate; a 'better' within "
    "the A/A noise floor counts as inconclusive)",
)
@eval_options("reports/ab")
@friendly_errors
def ab(
    base: str, adapters: tuple[str, ...], alpha: float, out: str | None, fail_if: str | None, **options: Any
) -> None:
    """A/B compare adapters with their base model on the same items (paired statistics + latency).

    Writes report.md, report.html, results.json and samples.jsonl under --out.
    """
    from tuneship.clients.evaluate import ab_compare
    from tuneship.clients.report import ab_table, judge_text

    settings = load_config(EvalSettings, None, out=out or "reports/ab", **options)
    result = ab_compare(settings, base, list(adapters), alpha)
    for warning in result.warnings:
        click.secho(warning, fg="red", err=True)
    click.echo(ab_table(result))
    if result.judge:
        click.echo(judge_text(result))
    for adapter, ratio in result.latency_ratio.items():
        click.echo(f"Latency {adapter}/{base}: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items()))
    click.echo(f"Report: {result.report}")
    failing = result.failing(fail_if) if fail_if else []
    if failing:
        raise click.ClickException(f"--fail-if {fail_if}: {', '.join(failing)} on {result.primary_metric}")


@click.command()
@options_from(FidelitySettings, envvars=ENV)
@friendly_errors
def verify(**options: Any) -> None:
    """Check that a served model is what the run trained: template, stopping, agreement, applied.

    Exits 1 when a check fails (a CI gate); a check the server cannot support is "not checked".
    """
    from tuneship.entrypoints.verify import verify_fidelity

    result = verify_fidelity(load_config(FidelitySettings, None, **options))
    click.echo(Path(str(result.report)).read_text())
    if result.verdict != "passed":
        raise click.ClickException(f"fidelity failed: {', '.join(result.failed)} (see {result.report})")


COMMANDS = (eval_, ab, verify)
