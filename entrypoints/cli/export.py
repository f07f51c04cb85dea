"""``tuneship export``: merge (the default; safetensors or GGUF), adapter-only export, verify an export."""

from __future__ import annotations

import click

from tuneship.entrypoints.cli import friendly_errors


class DefaultCommandGroup(click.Group):
    """A group whose first argument, when it names no subcommand, goes to a default command.

    ``tuneship export RUN --out DIR`` is ``tuneship export merge RUN --out DIR``.
    """

    default_command = "merge"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultCommandGroup)
def export() -> None:
    """Merge an adapter into its base (the default), export the adapter alone, or verify an export.

    \b
      tuneship export runs/tickets --out exports/tickets          # merged, checked safetensors
      tuneship export runs/tickets --adapter-only --out exports/tickets-lora
      tuneship export runs/tickets --format gguf --quant q8_0 --out exports/tickets-gguf
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
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["safetensors", "gguf"]),
    default="safetensors",
    show_default=True,
    help="safetensors (transformers, vLLM) or one GGUF file + Ollama Modelfile (llama.cpp, Ollama)",
)
@click.option(
    "--quant",
    default="f16",
    show_default=True,
    help="GGUF weight type: f16, bf16 or q8_0 (q4_k_m: run llama.cpp's llama-quantize on an f16 export)",
)
@click.option("--shard-size", default="2GB", show_default=True, help="maximum size of one safetensors shard")
@click.option(
    "--adapter-only",
    is_flag=True,
    help="write only a clean PEFT adapter (config + safetensors); not with --format gguf (no LoRA GGUF)",
)
@click.option("--force", is_flag=True, help="replace an existing export")
@friendly_errors
def export_merge(
    source: str,
    out: str,
    base: str | None,
    dtype: str,
    fmt: str,
    quant: str,
    shard_size: str,
    adapter_only: bool,
    force: bool,
) -> None:
    """Merge a run's adapter (SOURCE: run or adapter directory) into its base; save checked safetensors.

    Writes weights, tokenizer, the run's chat template, generation_config.json, a model card
    (README.md), parity.json (merged vs base + adapter) and manifest.json (sha256 of every
    file). Nothing is left at --out if any step fails.

    With --format gguf: one NAME-QUANT.gguf (Llama and Qwen2 architectures; weights, tokenizer,
    the run's chat template, its end-of-turn token) and an Ollama Modelfile, checked by reloading
    the file with transformers' GGUF loader against base + adapter (parity.json). A LoRA-only GGUF
    is not written.
    """
    if fmt == "gguf":
        if adapter_only:
            raise click.ClickException("--adapter-only writes a PEFT adapter; a LoRA GGUF is not supported")
        from tuneship.export.gguf_export import export_gguf

        exported = export_gguf(source, out, base, quant=quant, force=force)  # type: ignore[arg-type]
        click.echo(f"Parity with base + adapter (reloaded by transformers): {exported.parity.summary()}")
        click.echo(f"GGUF: {exported.file}")
        click.echo(f"Ollama: ollama create {exported.out.name} -f {exported.out / 'Modelfile'}")
        return
    if adapter_only:
        from tuneship.export.adapter import export_adapter

        report = export_adapter(source, out, force=force)
        click.echo(report.render())
        click.echo(f"Adapter: {out}")
        return
    from tuneship.export.merge import export_merged

    result = export_merged(source, out, base, dtype=dtype, shard_size=shard_size, force=force)
    click.echo(f"Parity with base + adapter: {result.parity.summary()}")
    click.echo(f"Merged model: {result.out}")


@export.command(name="verify")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--no-load", is_flag=True, help="check the hashes only, do not load the model")
@friendly_errors
def export_verify(directory: str, no_load: bool) -> None:
    """Re-check an export: every file against manifest.json, and that model and tokenizer load."""
    from tuneship.export.gguf_export import gguf_files, verify_gguf_export
    from tuneship.export.manifest import verify_export

    verify = verify_gguf_export if gguf_files(directory) else verify_export
    result = verify(directory, load=not no_load)
    if not result.ok:
        problems = "\n  ".join(result.problems())
        raise click.ClickException(f"{directory} does not match its manifest:\n  {problems}")
    loaded = "" if no_load else "; model and tokenizer load"
    click.echo(f"{directory}: all {result.files} files match manifest.json{loaded}")


COMMANDS = (export,)
