"""A job's own reports, beyond OpenAI: the new model A/B compared with the base, and its fidelity.

When a supervised job has a validation file, its worker runs, once the model is served and before
the job is marked ``succeeded``, the same commands a person would run against the managed vLLM:
``tuneship ab`` (base vs the new model on the validation file's conversations, the last assistant
turn as the reference; paired statistics, latency) and ``tuneship verify`` (template, stopping,
agreement with PEFT's answers, the adapter applied). Their reports become the job's result files
and their verdicts its events. A report that cannot be made is an event (a warning), never a
failed job: the model is trained and served either way.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneship.entrypoints.service.process import CLI, ProcessGroup, error_line

REPORTS_DIR = "reports"  # under a job's directory: ab/ and fidelity/
# Sized for a check that runs with every job, not for a study: the first items of the file, short
# answers, few latency requests. `tuneship ab` on the whole file is one command away.
AB_ITEMS = 200
AB_MAX_TOKENS = 64
AB_LATENCY_REQUESTS = 8
VERIFY_SAMPLES = 8
TIMEOUT = 1800  # seconds per report command


@dataclass
class JobReport:
    """One report of a job: the result files it attaches (name -> text) and the event that says it."""

    message: str
    level: str = "info"
    files: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] | None = None


@dataclass
class Evaluator:
    """Runs ``tuneship ab`` and ``tuneship verify`` for a finished job against the managed server."""

    endpoint: Callable[[], str | None]  # the managed vLLM's /v1 URL once it is ready
    api_key: str
    base_name: str
    stop: threading.Event

    def reports(self, job_dir: Path, run_dir: Path, model: str, validation: Path) -> Iterator[JobReport]:
        """The A/B and fidelity reports of ``model`` (its registry name), each as soon as it is made."""
        endpoint = self.endpoint()
        if endpoint is None:
            yield JobReport("No A/B or fidelity report: the model server is not ready", "warn")
            return
        out = job_dir / REPORTS_DIR
        ab = [
            "ab", "--base", self.base_name, "--adapter", model, "--data", str(validation),
            "--out", str(out / "ab"), "--limit", str(AB_ITEMS), "--max-tokens", str(AB_MAX_TOKENS),
            "--latency-requests", str(AB_LATENCY_REQUESTS), "--endpoint", endpoint,
        ]  # fmt: skip
        verify = [
            "verify", "--run", str(run_dir), "--model", model, "--base-model", self.base_name,
            "--samples", str(VERIFY_SAMPLES), "--out", str(out / "fidelity"), "--endpoint", endpoint,
        ]  # fmt: skip
        yield self.report("A/B", ab, out / "ab", _ab_report, model)
        yield self.report("fidelity", verify, out / "fidelity", _fidelity_report, model)

    def report(
        self,
        what: str,
        args: list[str],
        out: Path,
        read: Callable[[Path, str], JobReport],
        model: str,
    ) -> JobReport:
        """Run one report command (output in ``out``.log); its report, or a warning saying why none."""
        log = out.with_suffix(".log")
        env = {**os.environ, "TUNESHIP_API_KEY": self.api_key, "NO_COLOR": "1"}
        group = ProcessGroup([*CLI, *args], log, env=env)
        deadline = time.monotonic() + TIMEOUT
        while group.poll() is None and time.monotonic() < deadline and not self.stop.wait(0.5):
            pass
        if group.poll() is None:
            group.stop()
            why = "the service stopped" if self.stop.is_set() else f"it did not finish within {TIMEOUT} s"
            return JobReport(f"No {what} report: {why}", "warn")
        try:
            return read(out, model)
        except (OSError, ValueError, KeyError, IndexError):
            reason = error_line(group.log_lines()) or f"see {log}"
            return JobReport(f"No {what} report: {reason}", "warn")


def _ab_report(out: Path, model: str) -> JobReport:
    """The A/B verdict on the primary metric, and the report files."""
    results = json.loads((out / "results.json").read_text())
    first = results["comparisons"][model][0]
    message = (
        f"A/B on the validation file ({first['n']} items, tuneship ab): {first['metric']} "
        f"{first['base_mean']:.3f} (base) -> {first['adapter_mean']:.3f}, difference {first['diff']:+.3f} "
        f"[{first['ci_low']:+.3f}, {first['ci_high']:+.3f}], p={first['p_value']:.2g}: {first['verdict']}"
    )
    files = {"ab_report.md": (out / "report.md").read_text(), "ab_results.json": json.dumps(results)}
    data = {key: first[key] for key in ("metric", "base_mean", "adapter_mean", "diff", "p_value", "verdict")}
    level = "warn" if first["verdict"] == "worse" else "info"
    return JobReport(message, level, files, {"report": "ab", **data})


def _fidelity_report(out: Path, model: str) -> JobReport:
    """The fidelity verdict (which checks failed), and the report files."""
    result = json.loads((out / "fidelity.json").read_text())
    failed = result.get("failed") or []
    verdict = result["verdict"] + (f" ({', '.join(failed)} failed)" if failed else "")
    files = {"fidelity_report.md": (out / "fidelity.md").read_text(), "fidelity.json": json.dumps(result)}
    level = "warn" if failed else "info"
    return JobReport(f"Fidelity of the served model (tuneship verify): {verdict}", level, files,
                     {"report": "fidelity", "verdict": result["verdict"], "failed": failed})  # fmt: skip
