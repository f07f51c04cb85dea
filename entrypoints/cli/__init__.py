"""The ``tuneship`` command line: one click group, one library call per command.

Heavy libraries (torch, transformers, peft, trl, vllm) are imported inside the
commands, so ``tuneship --help`` answers instantly.
"""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from tuneship import __version__
from tuneship.config import field_help
from tuneship.errors import TuneshipError


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the project's exceptions into one clear line instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TuneshipError as e:
            raise click.ClickException(str(e)) from None

    return wrapper


def _train_help(name: str) -> str:
    from tuneship.train.config import TrainConfig

    return field_help(TrainConfig, name)


def _serve_help(name: str) -> str:
    from tuneship.serve.server import ServeConfig

    return field_help(ServeConfig, name)


def format_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--format``: the data format, when detection should be overridden."""
    from tuneship.train.data import FORMATS

    return click.option("--format", "format", type=click.Choice(FORMATS), help=_train_help("format"))(fn)


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


@cli.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="YAML file of training settings (CLI flags override it)",
)
@click.option("--data", help=_train_help("data"))
@click.option("--name", help=_train_help("name"))
@click.option("--runs-dir", help=_train_help("runs_dir"))
@click.option("--base", help=_train_help("base"))
@format_option
@click.option(
    "--method",
    type=click.Choice(["lora", "dora", "qlora", "full", "prompt-tuning"]),
    help=_train_help("method"),
)
@click.option("--loss-on", type=click.Choice(["assistant", "all"]), help=_train_help("loss_on"))
@click.option(
    "--chat-template", type=click.Path(exists=True, dir_okay=False), help=_train_help("chat_template")
)
@click.option("--lora-r", type=int, help=_train_help("lora_r"))
@click.option("--lora-alpha", type=int, help=_train_help("lora_alpha"))
@click.option("--target-modules", help=_train_help("target_modules"))
@click.option("--lr", "learning_rate", type=float, help=_train_help("learning_rate"))
@click.option("--max-steps", type=int, help=_train_help("max_steps"))
@click.option("--epochs", type=float, help=_train_help("epochs"))
@click.option("--batch-size", type=int, help=_train_help("batch_size"))
@click.option("--grad-accum", type=int, help=_train_help("grad_accum"))
@click.option("--max-length", type=int, help=_train_help("max_length"))
@click.option("--packing", type=click.Choice(["auto", "always", "never"]), help=_train_help("packing"))
@click.option("--eval-data", type=click.Path(exists=True), help=_train_help("eval_data"))
@click.option("--eval-fraction", type=float, help=_train_help("eval_fraction"))
@click.option("--eval-steps", type=int, help=_train_help("eval_steps"))
@click.option("--logging-steps", type=int, help=_train_help("logging_steps"))
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), help=_train_help("precision"))
@click.option("--seed", type=int, help=_train_help("seed"))
@click.option("--save-steps", type=int, help=_train_help("save_steps"))
@click.option("--skip-invalid", is_flag=True, default=None, help=_train_help("skip_invalid"))
@click.option("--resume", is_flag=True, help="continue an interrupted run from its last checkpoint")
@click.option("--force", is_flag=True, help="replace an existing run of the same name")
@friendly_errors
def train(config_file: str | None, resume: bool, force: bool, **overrides: Any) -> None:
    """Train an adapter (or a full model) on a dataset; writes runs/NAME/.

    Data: JSONL, JSON, CSV, Parquet or a datasets directory, in messages, prompt/completion,
    alpaca or sharegpt format. Every row is checked before any model loads.
    """
    from tuneship.config import load_config
    from tuneship.train.config import TrainConfig
    from tuneship.train.sft import is_main_process, train_model

    config = load_config(TrainConfig, config_file, **overrides)
    result = train_model(config, force=force, resume=resume)
    if not is_main_process():
        return  # under torchrun / accelerate launch, one process reports
    s = result.summary
    held_out = f", held-out loss {s['eval_loss']}" if s["eval_loss"] is not None else ""
    click.echo(f"Trained {s['steps']} steps, train loss {s['train_loss']}{held_out}")
    click.echo(f"Output: {result.adapter_dir}")
    click.echo(f"Run record: {result.run_dir / 'run.yaml'} (loss plot: {result.run_dir / 'loss.png'})")


@cli.group()
def data() -> None:
    """Inspect training data before spending compute."""


@data.command(name="check")
@click.argument("path", type=click.Path(exists=True))
@format_option
@click.option(
    "--base", default="default", show_default=True, help="model whose tokenizer and template to use"
)
@click.option("--max-length", default=512, show_default=True, help=_train_help("max_length"))
@click.option(
    "--loss-on",
    type=click.Choice(["assistant", "all"]),
    default="assistant",
    show_default=True,
    help=_train_help("loss_on"),
)
@click.option(
    "--chat-template", type=click.Path(exists=True, dir_okay=False), help=_train_help("chat_template")
)
@friendly_errors
def data_check(
    path: str, format: str | None, base: str, max_length: int, loss_on: str, chat_template: str | None
) -> None:
    """Check a data file: bad rows, token lengths, trained tokens, one rendered example."""
    from tuneship.train.datacheck import check_data

    check_data(path, format, base, max_length, loss_on, chat_template)


class DefaultCommandGroup(click.Group):
    """A group whose first argument, when it names no subcommand, goes to a default command.

    ``tuneship export RUN --out DIR`` is ``tuneship export merge RUN --out DIR``.
    """

    default_command = "merge"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@cli.group(cls=DefaultCommandGroup)
def export() -> None:
    """Merge an adapter into its base (the default), export the adapter alone, or verify an export.

    \b
      tuneship export runs/tickets --out exports/tickets          # merged, checked safetensors
      tuneship export runs/tickets --adapter-only --out exports/tickets-lora
      tuneship export verify exports/tickets                      # hashes, and that it loads
    """


@export.command(name="merge")
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(), help="directory for the export")
@click.option("--base", help="base model (default: the one recorded in the run's lineage)")
@click.option(
    "--dtype",
    type=click.Choice(["bf16", "fp16", "fp32"]),
    default="bf16",
    show_default=True,
    help="dtype of the saved weights",
)
@click.option("--shard-size", default="2GB", show_default=True, help="maximum size of one safetensors shard")
@click.option("--adapter-only", is_flag=True, help="write only a clean PEFT adapter (config + safetensors)")
@click.option("--force", is_flag=True, help="replace an existing export")
@friendly_errors
def export_merge(
    source: str, out: str, base: str | None, dtype: str, shard_size: str, adapter_only: bool, force: bool
) -> None:
    """Merge a run's adapter (SOURCE: run or adapter directory) into its base; save checked safetensors.

    Writes weights, tokenizer, the run's chat template, generation_config.json, a model card
    (README.md), parity.json (merged vs base + adapter) and manifest.json (sha256 of every
    file). Nothing is left at --out if any step fails.
    """
    if adapter_only:
        from tuneship.export.adapter import export_adapter

        report = export_adapter(source, out, force=force)
        click.echo(report.render())
        click.echo(f"Adapter: {out}")
        return
    from tuneship.export.merge import export_merged

    result = export_merged(source, out, base, dtype=dtype, shard_size=shard_size, force=force)
    p = result.parity
    click.echo(
        f"Parity with base + adapter: max |logit diff| {p['max_abs_logit_diff']:.4f}, "
        f"greedy agreement {p['greedy_agreement']:.1%} over {p['positions']} positions"
    )
    click.echo(f"Merged model: {result.out}")


@export.command(name="verify")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--no-load", is_flag=True, help="check the hashes only, do not load the model")
@friendly_errors
def export_verify(directory: str, no_load: bool) -> None:
    """Re-check an export: every file against manifest.json, and that model and tokenizer load."""
    from tuneship.export.manifest import verify_export

    result = verify_export(directory, load=not no_load)
    if not result.ok:
        problems = "\n  ".join(result.problems())
        raise click.ClickException(f"{directory} does not match its manifest:\n  {problems}")
    loaded = "" if no_load else "; model and tokenizer load"
    click.echo(f"{directory}: all {result.files} files match manifest.json{loaded}")


@cli.group()
def adapters() -> None:
    """LoRA adapters: check them for vLLM, keep them in a registry, hot-load them into a server."""


@adapters.command(name="check")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--base", help="the base model it will be served on (checked against the adapter's lineage)")
@friendly_errors
def adapters_check(path: str, base: str | None) -> None:
    """Report whether vLLM can serve the adapter at PATH (a run or adapter directory), and why not.

    Exits 1 when it cannot.
    """
    from tuneship.adapters import check_adapter, locate_adapter

    adapter = locate_adapter(path)
    base_sha = None
    if base:
        from tuneship.models import resolve_base

        base_sha = resolve_base(base).weights_sha256
    report = check_adapter(adapter, base_sha)
    click.echo(report.render())
    if not report.ok:
        sys.exit(1)


def registry_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--registry",
        envvar="TUNESHIP_REGISTRY",
        default="registry",
        show_default=True,
        help="adapter registry directory [env: TUNESHIP_REGISTRY]",
    )(fn)


def server_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--endpoint and --api-key of a running server."""
    fn = click.option(
        "--api-key", envvar="TUNESHIP_API_KEY", help="the server's API key [env: TUNESHIP_API_KEY]"
    )(fn)
    return click.option(
        "--endpoint",
        envvar="TUNESHIP_ENDPOINT",
        default="http://127.0.0.1:8000/v1",
        show_default=True,
        help="OpenAI-compatible base URL [env: TUNESHIP_ENDPOINT]",
    )(fn)


@adapters.command(name="add")
@click.argument("name")
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@registry_option
@click.option("--force", is_flag=True, help="replace an adapter of the same name")
@friendly_errors
def adapters_add(name: str, source: str, registry: str, force: bool) -> None:
    """Copy the adapter of SOURCE (a run or adapter directory) into the registry as NAME."""
    from tuneship.serve.registry import Registry

    entry = Registry(registry).add(name, source, force=force)
    click.echo(f"Registered {entry.name}: {entry.path} (sha256 {entry.sha256[:12]}, base {entry.base_name})")


@adapters.command(name="list")
@server_options
@registry_option
@friendly_errors
def adapters_list(endpoint: str, api_key: str | None, registry: str) -> None:
    """What the running server serves (name, parent, content hash), and what the registry holds."""
    from tuneship.errors import ServerError
    from tuneship.serve.control import list_live
    from tuneship.serve.registry import Registry

    live: dict[str, Any] = {}
    try:
        live = {m.name: m for m in list_live(endpoint, api_key)}
        click.echo(f"Live at {endpoint}:")
        for m in live.values():
            kind = f"adapter of {m.parent}" if m.parent else "base model"
            click.echo(f"  {m.name:24} {kind:32} sha256 {(m.sha256 or '?')[:12]}")
    except ServerError as e:
        click.echo(f"No server: {e}")
    entries = Registry(registry).entries()
    click.echo(f"Registry {registry}: {len(entries)} adapter(s)")
    for e in entries:
        state = "live" if e.name in live and live[e.name].sha256 == e.sha256 else "not loaded"
        if e.name in live and live[e.name].sha256 not in (None, e.sha256):
            state = "live with other content"
        click.echo(f"  {e.name:24} sha256 {e.sha256[:12]}  base {e.base_name}  ({state})")


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


def _parse_adapters(values: tuple[str, ...]) -> dict[str, str]:
    adapters = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{value!r}: expected NAME=PATH", param_hint="--adapter")
        adapters[name] = path
    return adapters


@cli.command()
@click.option("--base", help=_serve_help("base"))
@click.option("--merged", type=click.Path(exists=True, file_okay=False), help=_serve_help("merged"))
@click.option("--served-name", help=_serve_help("served_name"))
@click.option(
    "--adapter", "adapters", multiple=True, metavar="NAME=PATH", help="LoRA adapter to serve (repeatable)"
)
@click.option("--registry", type=click.Path(file_okay=False), help=_serve_help("registry"))
@click.option("--max-lora-rank", type=int, help=_serve_help("max_lora_rank"))
@click.option("--host", help=_serve_help("host"))
@click.option("--port", type=int, help=_serve_help("port"))
@click.option(
    "--api-key", envvar="TUNESHIP_API_KEY", help=_serve_help("api_key") + " [env: TUNESHIP_API_KEY]"
)
@click.option("--max-loras", type=int, help=_serve_help("max_loras"))
@click.option("--max-model-len", type=int, help=_serve_help("max_model_len"))
@click.option("--kv-cache-gb", type=int, help=_serve_help("kv_cache_gb"))
@click.option("--gpu-memory-utilization", type=float, help=_serve_help("gpu_memory_utilization"))
@click.option("--tensor-parallel-size", type=int, help=_serve_help("tensor_parallel_size"))
@click.option("--log-file", help=_serve_help("log_file"))
@click.option("--vllm-arg", "extra_args", multiple=True, help="extra flag passed to vLLM as is (repeatable)")
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
def serve(
    adapters: tuple[str, ...],
    extra_args: tuple[str, ...],
    runtime: str,
    image: str | None,
    docker_network: str,
    **options: Any,
) -> None:
    """Serve the base model and LoRA adapters with vLLM (OpenAI-compatible) until Ctrl-C."""
    from tuneship.config import load_config
    from tuneship.serve.server import ServeConfig, VLLMServer

    config = load_config(
        ServeConfig,
        None,
        adapters=_parse_adapters(adapters) or None,
        extra_args=list(extra_args) or None,
        **options,
    )
    if runtime == "docker":
        from tuneship.serve.container import DockerServer

        server: VLLMServer = DockerServer(config, image=image, network=docker_network)
        click.echo(f"Container image: {server.spec.image}")  # type: ignore[attr-defined]
    else:
        server = VLLMServer(config)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run the cleanup below on SIGTERM too
    click.echo(f"Starting vLLM (log: {server.log_path}) ...")
    server.start()
    try:
        server.wait_ready()
        click.echo(f"Ready at {server.url}")
        for name in server.served_names:
            click.echo(f"  model: {name}")
        for note in server.notes():
            click.echo(note)
        click.echo("Press Ctrl-C to stop.")
        code = server.wait()
        raise click.ClickException(f"vLLM exited with code {code}:\n{server.log_tail()}")
    except KeyboardInterrupt:
        click.echo("Stopping ...")
    finally:
        server.stop()


def _eval_settings(scorers: tuple[str, ...], max_tokens: int, **options: Any) -> Any:
    from tuneship.clients.evaluate import EvalSettings
    from tuneship.clients.runner import Sampling

    return EvalSettings(scorers=list(scorers), sampling=Sampling(max_tokens=max_tokens), **options)


def eval_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--endpoint",
            default="http://127.0.0.1:8000/v1",
            show_default=True,
            help="OpenAI-compatible base URL",
        ),
        click.option(
            "--data",
            required=True,
            type=click.Path(exists=True, dir_okay=False),
            help="JSONL evaluation items (messages or prompt, with references)",
        ),
        click.option("--out", default=None, help="report directory (default: reports/<model or ab>)"),
        click.option(
            "--scorer",
            "scorers",
            multiple=True,
            help="scorer to apply (repeatable; default: chosen from the references)",
        ),
        click.option("--api-key", envvar="TUNESHIP_API_KEY", help="API key for the endpoint"),
        click.option("--limit", type=int, help="only the first N items"),
        click.option("--concurrency", default=16, show_default=True, help="requests in flight"),
        click.option("--max-tokens", default=128, show_default=True, help="maximum tokens per answer"),
        click.option("--timeout", default=120.0, show_default=True, help="seconds per request"),
        click.option(
            "--retries",
            default=5,
            show_default=True,
            help="retries on 429/5xx/connection errors (with backoff)",
        ),
        click.option(
            "--latency-requests",
            default=32,
            show_default=True,
            help="fresh streamed requests per model for latency (0: skip)",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@cli.command(name="eval")
@click.option("--model", required=True, help="served model name to evaluate")
@eval_options
@friendly_errors
def eval_(model: str, out: str | None, **kwargs: Any) -> None:
    """Score one served model on evaluation data through the OpenAI API."""
    from tuneship.clients.evaluate import evaluate

    summary = evaluate(_eval_settings(out=out or f"reports/{model}", **kwargs), model)
    for metric, value in summary["scores"].items():
        click.echo(f"{metric:>12}: {value:.3f}")
    click.echo(f"Report: {summary['report']}")


FAIL_IF = {
    "worse": ("worse",),
    "not-better": ("worse", "inconclusive", "non-inferior"),
    "inconclusive": ("worse", "inconclusive"),
}


@cli.command()
@click.option("--base", required=True, help="served name of the base model")
@click.option(
    "--adapter",
    "adapters",
    multiple=True,
    required=True,
    help="served adapter name (repeatable; the base's own name runs an A/A check)",
)
@click.option("--alpha", default=0.05, show_default=True, help="significance level")
@click.option("--margin", type=float, help="non-inferiority margin, in the primary metric's units")
@click.option("--judge-endpoint", help="OpenAI-compatible URL of a pairwise judge model (optional)")
@click.option("--judge-model", help="judge model name at --judge-endpoint")
@click.option("--judge-api-key", envvar="TUNESHIP_JUDGE_API_KEY", help="judge endpoint's key")
@click.option(
    "--fail-if",
    type=click.Choice(list(FAIL_IF)),
    help="exit 1 when an adapter's primary-metric verdict is this (a CI gate)",
)
@eval_options
@friendly_errors
def ab(
    base: str, adapters: tuple[str, ...], alpha: float, out: str | None, fail_if: str | None, **kwargs: Any
) -> None:
    """A/B compare adapters with their base model on the same items (paired statistics + latency).

    Writes report.md, report.html, results.json and samples.jsonl under --out.
    """
    from tuneship.clients.evaluate import ab_compare
    from tuneship.clients.report import ab_table

    result = ab_compare(_eval_settings(out=out or "reports/ab", **kwargs), base, list(adapters), alpha)
    for warning in result["warnings"]:
        click.secho(warning, fg="red", err=True)
    click.echo(ab_table(result))
    for adapter, ratio in result["latency_ratio"].items():
        click.echo(f"Latency {adapter}/{base}: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items()))
    click.echo(f"Report: {result['report']}")
    if fail_if:
        primary = result["primary_metric"]
        failing = [
            a
            for a, cs in result["comparisons"].items()
            for c in cs
            if c["metric"] == primary and c["verdict"] in FAIL_IF[fail_if]
        ]
        if failing:
            raise click.ClickException(f"--fail-if {fail_if}: {', '.join(failing)} on {primary}")


@cli.command()
@click.option(
    "--run", "run", required=True, type=click.Path(exists=True, file_okay=False), help="the training run"
)
@click.option("--model", required=True, help="served name of the adapter (or merged model) to check")
@click.option("--base-model", help="served name of the base model (default: the model's parent)")
@click.option(
    "--endpoint",
    envvar="TUNESHIP_ENDPOINT",
    default="http://127.0.0.1:8000/v1",
    show_default=True,
    help="OpenAI-compatible base URL",
)
@click.option("--api-key", envvar="TUNESHIP_API_KEY", help="the server's API key")
@click.option("--samples", default=16, show_default=True, help="conversations per check")
@click.option("--max-tokens", default=64, show_default=True, help="greedy tokens per answer")
@click.option("--min-agreement", default=0.75, show_default=True, help="share of answers that must match")
@click.option("--out", help="where fidelity.json/.md go (default: RUN/fidelity)")
@friendly_errors
def verify(**options: Any) -> None:
    """Check that a served model is what the run trained: template, stopping, agreement, applied.

    Exits 1 when a check fails (a CI gate); a check the server cannot support is "not checked".
    """
    from tuneship.entrypoints.verify import FidelitySettings, verify_fidelity

    result = verify_fidelity(FidelitySettings(**options))
    click.echo((Path(result["report"])).read_text())
    if result["verdict"] != "passed":
        raise click.ClickException(f"fidelity failed: {', '.join(result['failed'])} (see {result['report']})")


@cli.command()
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


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
