"""The reports a job attached: its A/B comparison with the base and its fidelity verdict.

Both are the job's result files (read through the service's file store, as ``/v1/files/ID/content``
would send them); the A/B page draws them with the CLI reports' own SVG charts
(``clients/templates/charts.svg.j2``) and lists every answer from the run's ``samples.jsonl``
(kept in the job's directory), filterable by outcome and tag.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from tuneship.entrypoints.service.console.access import Access
from tuneship.entrypoints.service.console.render import page
from tuneship.entrypoints.service.console.session import Viewer
from tuneship.entrypoints.service.evaluation import REPORTS_DIR
from tuneship.entrypoints.service.schemas import APIError

if TYPE_CHECKING:
    from tuneship.entrypoints.service.service import Service

SAMPLES = "samples.jsonl"  # `tuneship ab`'s every answer (clients/report.py)
OUTCOMES = ("all", "improved", "regressed", "same")


def result_texts(service: Service, job_id: str) -> dict[str, str]:
    """A job's result files by filename: their text (APIError 404 when there is no such job)."""
    job = service.jobs.get(job_id)
    texts = {}
    for file_id in job.result_files or []:
        try:
            record = service.files.get(file_id)
            texts[record.filename] = service.files.path(record).read_text()
        except (APIError, FileNotFoundError):
            continue  # deleted by someone since
    return texts


def ab_items(rows: list[dict[str, Any]], base: str, adapter: str, metric: str) -> list[dict[str, Any]]:
    """One row per item: prompt, reference, both answers, scores and outcome (adapter vs base)."""
    by_id: dict[str, dict[str, Any]] = {}
    for row in rows:
        item = by_id.setdefault(row["id"], {"id": row["id"], "tags": row.get("tags") or [], "answers": {}})
        messages = row.get("prompt") or []
        item["prompt"] = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
        item["reference"] = (row.get("references") or [""])[0]
        item["answers"][row["arm"]] = {"output": row.get("output", ""), "score": row["scores"].get(metric)}
    items = []
    for item in by_id.values():
        if base not in item["answers"] or adapter not in item["answers"]:
            continue
        b, a = item["answers"][base]["score"], item["answers"][adapter]["score"]
        item["outcome"] = "same" if a is None or b is None or a == b else "improved" if a > b else "regressed"
        items.append(item)
    return items


def ab_context(results: dict[str, Any], rows: list[dict[str, Any]], outcome: str, tag: str) -> dict[str, Any]:
    """What the A/B page shows: comparisons, chart rows (the reports' charts), filtered items."""
    base = results["base"]
    adapter = results["adapters"][0]
    comparisons = results["comparisons"][adapter]
    metric = results["primary_metric"]
    intervals = [
        {"label": c["metric"], "diff": c["diff"], "low": c["ci_low"], "high": c["ci_high"]}
        for c in comparisons
    ]
    means = {
        c["metric"]: {base: c["base_mean"], adapter: c["adapter_mean"]}
        for c in comparisons
        if max(c["base_mean"], c["adapter_mean"]) <= 1  # the bar chart's axis is [0, 1]
    }
    items = ab_items(rows, base, adapter, metric)
    tags = sorted({t for i in items for t in i["tags"]})
    shown = [
        i for i in items if outcome in ("all", i["outcome"]) and (not tag or tag in i["tags"])
    ]  # fmt: skip
    latency = [
        {"label": arm, "values": s["samples_e2e_s"], "median": s.get("e2e_p50_ms") and s["e2e_p50_ms"] / 1000}
        for arm, s in (results.get("latency") or {}).items()
        if s and s.get("samples_e2e_s")
    ]
    return {
        "result": results, "base": base, "adapter": adapter, "metric": metric, "comparisons": comparisons,
        "intervals": intervals, "means": means, "latency": latency, "items": shown, "total": len(items),
        "tags": tags, "outcome": outcome, "tag": tag, "outcomes": OUTCOMES,
    }  # fmt: skip


def add_routes(router: APIRouter, service: Service, access: Access) -> None:
    """``/ui/jobs/ID/ab`` and ``/ui/jobs/ID/fidelity``."""

    @router.get("/jobs/{job_id}/ab")
    def ab_page(job_id: str, request: Request) -> Response:
        """The job's A/B report: scores per arm, differences with intervals, every item's answers."""
        viewer = access.page(request, admin=True)
        if not isinstance(viewer, Viewer):
            return viewer
        try:
            texts = result_texts(service, job_id)
        except APIError as e:
            return page("message.html.j2", 404, viewer=viewer, title="No such job", message=e.message)
        if "ab_results.json" not in texts:
            return page("message.html.j2", 404, viewer=viewer, title="No A/B report",
                        message=f"Job {job_id} has no A/B report (it needs a validation file).")  # fmt: skip
        samples = service.jobs.job_dir(job_id) / REPORTS_DIR / "ab" / SAMPLES
        rows = [json.loads(line) for line in samples.read_text().splitlines()] if samples.is_file() else []
        outcome = request.query_params.get("outcome", "all")
        context = ab_context(
            json.loads(texts["ab_results.json"]),
            rows,
            outcome if outcome in OUTCOMES else "all",
            request.query_params.get("tag", ""),
        )
        return page("ab.html.j2", viewer=viewer, title=f"A/B report of {job_id}", job_id=job_id,
                    markdown=texts.get("ab_report.md", ""), **context)  # fmt: skip

    @router.get("/jobs/{job_id}/fidelity")
    def fidelity_page(job_id: str, request: Request) -> Response:
        """The job's fidelity report: is the served model the trained one (template, stopping, ...)."""
        viewer = access.page(request, admin=True)
        if not isinstance(viewer, Viewer):
            return viewer
        try:
            texts = result_texts(service, job_id)
        except APIError as e:
            return page("message.html.j2", 404, viewer=viewer, title="No such job", message=e.message)
        if "fidelity.json" not in texts:
            return page(
                "message.html.j2",
                404,
                viewer=viewer,
                title="No fidelity report",
                message=f"Job {job_id} has no fidelity report (it had no validation file).",
            )
        result = json.loads(texts["fidelity.json"])
        markdown = texts.get("fidelity_report.md", "")
        return page("fidelity.html.j2", viewer=viewer, title=f"Fidelity of {job_id}", job_id=job_id,
                    result=result, markdown=markdown)  # fmt: skip
