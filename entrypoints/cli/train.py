"""``tuneship train`` and ``tuneship data check``: the options come from :class:`TrainConfig`."""

from __future__ import annotations

from typing import Any

import click

from tuneship.config import load_config, options_from
from tuneship.entrypoints.cli import config_option, friendly_errors
from tuneship.train.config import TrainConfig

# Short or historic flag names of training settings (the field's own name works too).
FLAGS = {"learning_rate": "--lr"}
# What `data check` looks at: the data, and how training would render and cut it.
DATA_CHECK = ("format", "base", "chat_template", "loss_on", "max_length", "skip_invalid")


@click.command()
@config_option
@options_from(TrainConfig, flags=FLAGS, config_file=True)
@click.option("--resume", is_flag=True, help="continue an interrupted run from its last checkpoint")
@click.option("--force", is_flag=True, help="replace an existing run of the same name")
@friendly_errors
def train(config_file: str | None, resume: bool, force: bool, **overrides: Any) -> None:
    """Train an adapter (or a full model) on a dataset; writes runs/NAME/.

    Data: JSONL, JSON, CSV, Parquet or a datasets directory, in messages, prompt/completion,
    alpaca, sharegpt or text format, or preference pairs for --method dpo (OpenAI's
    input/preferred_output/non_preferred_output, or prompt/chosen/rejected). Every row is
    checked before any model loads.
    """
    from tuneship.train.sft import is_main_process, train_model

    config = load_config(TrainConfig, config_file, **overrides)
    result = train_model(config, force=force, resume=resume)
    if not is_main_process():
        return  # under torchrun / accelerate launch, one process reports
    s = result.summary
    held_out = f", held-out loss {s['eval_loss']}" if s["eval_loss"] is not None else ""
    click.echo(f"Trained {s['steps']} steps, train loss {s['train_loss']}{held_out}")
    if s.get("preference_accuracy") is not None:  # dpo with held-out pairs
        click.echo(
            f"Held-out pairs: preference accuracy {s['preference_accuracy_start']} -> "
            f"{s['preference_accuracy']}, reward accuracy {s['reward_accuracy']}, "
            f"reward margin {s['reward_margin']}"
        )
    click.echo(f"Output: {result.adapter_dir}")
    click.echo(f"Run record: {result.run_dir / 'run.yaml'} (loss plot: {result.run_dir / 'loss.png'})")


@click.group()
def data() -> None:
    """Inspect training data before spending compute."""


@data.command(name="check")
@click.argument("path", required=False, type=click.Path(exists=True))
@config_option
@options_from(TrainConfig, exclude=set(TrainConfig.model_fields) - set(DATA_CHECK), config_file=True)
@click.option("--json", "as_json", is_flag=True, help="print the result (DataCheck) as JSON, not a report")
@friendly_errors
def data_check(path: str | None, config_file: str | None, as_json: bool, **overrides: Any) -> None:
    """Check a data file: bad rows, token lengths, trained tokens, one rendered example.

    PATH (default: the data of --config) is read exactly as `tuneship train` with the same
    settings would read it. Exit status 1 when training would refuse the data (an invalid row,
    unless skipped); 0 when it would train.
    """
    from rich.console import Console

    from tuneship.train.datacheck import check_data

    config = load_config(TrainConfig, config_file, data=path, **overrides)
    report = check_data(config)
    if as_json:
        click.echo(report.model_dump_json(indent=2))
    else:
        console = Console(highlight=False, soft_wrap=True)  # one line per problem, for grep
        for line in report.render():
            console.print(line)
    if not report.passed:
        raise SystemExit(1)


COMMANDS = (train, data)
