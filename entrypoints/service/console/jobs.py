"""Files and fine-tuning jobs for admin keys: upload (with the preflight's verdict by line), create,
follow (status, events, loss curves, checkpoints) and cancel -- through the service's own stores."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response

from tuneship.config import describe_errors
from tuneship.entrypoints.service.console.access import CSRF_FIELD, Access
from tuneship.entrypoints.service.console.render import line_chart, page
from tuneship.entrypoints.service.console.session import Viewer
from tuneship.entrypoints.service.files import UNFINISHED
from tuneship.entrypoints.service.schemas import APIError, JobCreate, job_object
from tuneship.entrypoints.service.upload import discard, receive_upload

if TYPE_CHECKING:
    from tuneship.entrypoints.service.service import Service

HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier", "beta")
REPORT_FILES = {"ab": "ab_results.json", "fidelity": "fidelity.json"}
EVENTS_SHOWN = 1000  # a job's events read for its page (its metrics make the loss chart)


def job_request(form: dict[str, str]) -> JobCreate:
    """The job-creation request of the console's form: blank hyperparameters are ``"auto"``."""
    method = form.get("method") or "supervised"
    values: dict[str, Any] = {}
    for name in HYPERPARAMETERS:
        text = (form.get(name) or "").strip()
        if text and text != "auto":
            values[name] = float(text) if "." in text or "e" in text.lower() else int(text)
    body: dict[str, Any] = {
        "model": form.get("model", ""),
        "training_file": form.get("training_file", ""),
        "validation_file": form.get("validation_file") or None,
        "suffix": (form.get("suffix") or "").strip() or None,
        "seed": int(form["seed"]) if (form.get("seed") or "").strip() else None,
        "method": {"type": method, method: {"hyperparameters": values}},
    }
    return JobCreate.model_validate(body)


def loss_series(events: list[Any]) -> dict[str, list[tuple[float, float]]]:
    """Train and validation loss by step, from a job's metrics events."""
    series: dict[str, list[tuple[float, float]]] = {"train loss": [], "validation loss": []}
    for event in events:
        data = event.data or {}
        if event.type != "metrics" or "step" not in data:
            continue
        for key, name in (("train_loss", "train loss"), ("valid_loss", "validation loss")):
            if isinstance(data.get(key), (int, float)):
                series[name].append((float(data["step"]), float(data[key])))
    return series


def add_routes(router: APIRouter, service: Service, access: Access) -> None:
    """The jobs page, uploads, a file's verdict, job creation, a job's page and cancel."""

    def jobs_page(viewer: Viewer, status: int = 200, error: str | None = None, form: dict | None = None):
        jobs, _ = service.jobs.list(None, 50)
        files, _ = service.files.list(None, 200, "fine-tune", "desc")
        return page(
            "jobs.html.j2", status, viewer=viewer, title="Jobs", error=error, form=form or {},
            jobs=[job_object(j) for j in jobs], files=files, base=service.base_name,
            limit_mb=service.config.upload_limit_mb,
        )  # fmt: skip

    @router.get("/jobs")
    def jobs(request: Request) -> Response:
        """Jobs newest first, the uploaded files, and the forms to upload a file and create a job."""
        viewer = access.page(request, admin=True)
        return viewer if not isinstance(viewer, Viewer) else jobs_page(viewer)

    @router.post("/files")
    async def upload(request: Request) -> Response:
        """A file from the upload form, streamed to disk as the API's upload is; then its verdict page."""
        viewer = await run_in_threadpool(access.page, request, True)
        if not isinstance(viewer, Viewer):
            return viewer
        try:
            received = await receive_upload(request, service.paths.files, service.config.upload_limit)
        except APIError as e:
            return await run_in_threadpool(jobs_page, viewer, e.status, f"Upload refused: {e.message}")
        checked = await run_in_threadpool(access.form, request, received.fields.get(CSRF_FIELD), True)
        if not isinstance(checked, Viewer):
            discard(received)
            return checked
        record = await run_in_threadpool(service.files.add_upload, received, "fine-tune")
        service.preflight.kick.set()
        return RedirectResponse(f"/ui/files/{record.id}", status_code=303)

    @router.get("/files/{file_id}")
    def file_page(file_id: str, request: Request) -> Response:
        """A file and the preflight's verdict: every ``file:line: reason`` of a refused file."""
        viewer = access.page(request, admin=True)
        if not isinstance(viewer, Viewer):
            return viewer
        try:
            record = service.files.get(file_id)
        except APIError as e:
            return page("message.html.j2", 404, viewer=viewer, title="No such file", message=e.message)
        return page("file.html.j2", viewer=viewer, title=record.filename, file=record)

    @router.get("/files/{file_id}/content")
    def file_content(file_id: str, request: Request) -> Response:
        """A file's bytes (a job's metrics CSV or report), as ``/v1/files/ID/content`` sends them."""
        viewer = access.page(request, admin=True)
        if not isinstance(viewer, Viewer):
            return viewer
        record = service.files.get(file_id)
        media = "text/plain; charset=utf-8" if record.purpose == "fine-tune-results" else None
        return FileResponse(
            service.files.path(record),
            media_type=media or "application/octet-stream",
            headers={"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"},
        )

    @router.post("/jobs")
    async def create(request: Request) -> Response:
        """Create a job from the form (OpenAI's request, as the API validates it); then its page."""
        form = {k: str(v) for k, v in (await request.form()).items()}
        viewer = await run_in_threadpool(access.form, request, form.get(CSRF_FIELD), True)
        if not isinstance(viewer, Viewer):
            return viewer
        try:
            body = job_request(form)
            job = await run_in_threadpool(service.jobs.create, body, service.model_names)
        except ValidationError as e:
            error = describe_errors(e).removeprefix("invalid settings: ")
            return await run_in_threadpool(jobs_page, viewer, 400, f"Job refused: {error}", form)
        except (APIError, ValueError) as e:
            message = e.message if isinstance(e, APIError) else f"a number is not valid: {e}"
            return await run_in_threadpool(jobs_page, viewer, 400, f"Job refused: {message}", form)
        service.kick.set()
        return RedirectResponse(f"/ui/jobs/{job.id}", status_code=303)

    @router.get("/jobs/{job_id}")
    def job_page(job_id: str, request: Request) -> Response:
        """A job: status, hyperparameters, loss curves, checkpoints, reports and events (live)."""
        viewer = access.page(request, admin=True)
        if not isinstance(viewer, Viewer):
            return viewer
        try:
            job = service.jobs.get(job_id)
        except APIError as e:
            return page("message.html.j2", 404, viewer=viewer, title="No such job", message=e.message)
        events, _ = service.jobs.events(job_id, None, EVENTS_SHOWN)
        checkpoints, _ = service.jobs.checkpoints(job_id, None, 100)
        results = [r for r in (_record(service, f) for f in job.result_files or []) if r is not None]
        names = {r.filename for r in results}
        return page(
            "job.html.j2", viewer=viewer, title=f"Job {job.id}", job=job_object(job),
            live=job.status in UNFINISHED, events=events, checkpoints=checkpoints, results=results,
            chart=line_chart(loss_series(events)),
            reports=[kind for kind, name in REPORT_FILES.items() if name in names],
        )  # fmt: skip

    @router.post("/jobs/{job_id}/cancel")
    async def cancel(job_id: str, request: Request) -> Response:
        """Cancel a job (its training processes are stopped by its worker); back to its page."""
        form = await request.form()
        viewer = await run_in_threadpool(access.form, request, form.get(CSRF_FIELD), True)
        if not isinstance(viewer, Viewer):
            return viewer
        try:
            await run_in_threadpool(service.jobs.cancel, job_id)
        except APIError as e:
            return page("message.html.j2", e.status, viewer=viewer, title="Not cancelled", message=e.message)
        service.kick.set()
        return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)


def _record(service: Service, file_id: str) -> Any:
    """A file's record, or None when it was deleted since."""
    try:
        return service.files.get(file_id)
    except APIError:
        return None
