"""The FastAPI application: thin routes over the service's stores, errors in OpenAI's shape.

Control-plane routes (files, jobs) need an ``admin`` key and run their database work off the
event loop; inference routes take any key and stream through :class:`~.proxy.FrontDoor`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from tuneship.config import describe_errors
from tuneship.entrypoints.service.capture import FeedbackRequest
from tuneship.entrypoints.service.console import console_router
from tuneship.entrypoints.service.proxy import FrontDoor
from tuneship.entrypoints.service.schemas import (
    APIError,
    JobCreate,
    checkpoint_object,
    event_object,
    file_object,
    job_object,
    page,
)
from tuneship.entrypoints.service.upload import discard, receive_upload

if TYPE_CHECKING:
    from tuneship.entrypoints.service.service import Service

log = logging.getLogger(__name__)
INFERENCE = ("/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize")


def create_app(service: Service) -> FastAPI:
    """The app of ``service``; its lifespan starts and stops the service's parts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(service.start)
        app.state.front = FrontDoor(service.router, service.aliases, service.monitor, service.recorder)
        try:
            yield
        finally:
            await app.state.front.close()
            await run_in_threadpool(service.stop)

    app = FastAPI(title="tuneship service", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    _error_handlers(app)
    _file_routes(app, service)
    _job_routes(app, service)
    _inference_routes(app, service)
    app.include_router(console_router(service))  # the web console at /ui
    return app


def _key(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(
            401,
            "You didn't provide an API key: send it as a Bearer token (Authorization: Bearer KEY)",
            code="missing_api_key",
        )
    return token.strip()


def _authorize(service: Service, request: Request, admin: bool) -> str:
    role = service.keys.role(_key(request))
    if role is None:
        raise APIError(401, "Incorrect API key provided", code="invalid_api_key")
    if admin and role != "admin":
        raise APIError(
            403,
            "this key may call models, not train or manage them (an admin key may)",
            code="insufficient_permissions",
        )
    return role


async def _admin(request: Request) -> None:
    await run_in_threadpool(_authorize, request.app.state.service, request, True)


async def _caller(request: Request) -> None:
    _authorize(request.app.state.service, request, False)  # known keys are answered from memory


Admin = Annotated[None, Depends(_admin)]  # a route for admin keys
Caller = Annotated[None, Depends(_caller)]  # a route for any key


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        body = APIError(400, f"{param or 'request'}: {first.get('msg', 'invalid')}", param=param).body()
        return JSONResponse(body, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        body = APIError(
            error.status_code, str(error.detail), code="not_found" if error.status_code == 404 else None
        )
        return JSONResponse(body.body(), status_code=error.status_code)


def _file_routes(app: FastAPI, service: Service) -> None:
    @app.post("/v1/files")
    async def upload_file(request: Request, _: Admin) -> dict[str, Any]:
        """Upload a file (multipart: ``file`` and ``purpose=fine-tune``), streamed to disk."""
        upload = await receive_upload(request, service.paths.files, service.config.upload_limit)
        purpose = upload.fields.get("purpose")
        if purpose != "fine-tune":
            discard(upload)
            raise APIError(400, f"purpose {purpose!r}: this service takes fine-tune files", param="purpose")
        record = await run_in_threadpool(service.files.add_upload, upload, purpose)
        service.preflight.kick.set()
        return file_object(record)

    @app.get("/v1/files")
    def list_files(
        _: Admin,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
        purpose: str | None = None,
        order: str = "desc",
    ) -> dict[str, Any]:
        """Uploaded and result files, newest first (``order=asc`` for oldest first)."""
        records, more = service.files.list(after, limit, purpose, order)
        return page([file_object(r) for r in records], more)

    @app.get("/v1/files/{file_id}")
    def get_file(file_id: str, _: Admin) -> dict[str, Any]:
        """One file's record, with the preflight's verdict in ``status`` and ``status_details``."""
        return file_object(service.files.get(file_id))

    @app.get("/v1/files/{file_id}/content")
    def file_content(file_id: str, _: Admin) -> FileResponse:
        """The file's bytes, read from disk as they are sent."""
        record = service.files.get(file_id)
        return FileResponse(service.files.path(record), media_type="application/octet-stream")

    @app.delete("/v1/files/{file_id}")
    def delete_file(file_id: str, _: Admin) -> dict[str, Any]:
        """Delete a file (refused while an unfinished job uses it)."""
        service.files.delete(file_id)
        return {"id": file_id, "object": "file", "deleted": True}


def _job_routes(app: FastAPI, service: Service) -> None:
    @app.post("/v1/fine_tuning/jobs")
    async def create_job(request: Request, _: Admin) -> dict[str, Any]:
        """Create a fine-tuning job (OpenAI's request); it is validated, queued, then run by a worker."""
        try:
            body = JobCreate.model_validate_json(await request.body())
        except ValidationError as e:
            first = e.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            raise APIError(400, describe_errors(e).removeprefix("invalid settings: "), param=param) from None
        job = await run_in_threadpool(service.jobs.create, body, service.model_names)
        service.kick.set()
        return job_object(job)

    @app.get("/v1/fine_tuning/jobs")
    def list_jobs(
        _: Admin, after: str | None = None, limit: Annotated[int, Query(ge=1, le=100)] = 20
    ) -> dict[str, Any]:
        """Jobs, newest first."""
        jobs, more = service.jobs.list(after, limit)
        return page([job_object(j) for j in jobs], more)

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    def get_job(job_id: str, _: Admin) -> dict[str, Any]:
        """One job."""
        return job_object(service.jobs.get(job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    def cancel_job(job_id: str, _: Admin) -> dict[str, Any]:
        """Cancel a job; a running one's training processes are stopped by its worker."""
        job = service.jobs.cancel(job_id)
        service.kick.set()
        return job_object(job)

    @app.post("/v1/fine_tuning/jobs/{job_id}/pause")
    def pause_job(job_id: str, _: Admin) -> dict[str, Any]:
        """Pause a queued or running job (its training stops; progress since the last checkpoint is lost)."""
        return job_object(service.jobs.pause(job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/resume")
    def resume_job(job_id: str, _: Admin) -> dict[str, Any]:
        """Queue a paused job again; it continues from its last checkpoint."""
        job = service.jobs.resume(job_id)
        service.kick.set()
        return job_object(job)

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    def job_events(
        job_id: str, _: Admin, after: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 20
    ) -> dict[str, Any]:
        """A job's status and metrics events, newest first."""
        events, more = service.jobs.events(job_id, after, limit)
        return page([event_object(e) for e in events], more)

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    def job_checkpoints(
        job_id: str, _: Admin, after: str | None = None, limit: Annotated[int, Query(ge=1, le=100)] = 10
    ) -> dict[str, Any]:
        """A job's checkpoints, newest first."""
        checkpoints, more = service.jobs.checkpoints(job_id, after, limit)
        return page([checkpoint_object(c) for c in checkpoints], more)


def _inference_routes(app: FastAPI, service: Service) -> None:
    async def forward(request: Request, _: Caller) -> Any:
        return await request.app.state.front.forward(request, request.url.path)

    for path in INFERENCE:
        app.add_api_route(path, forward, methods=["POST"], include_in_schema=False)

    @app.get("/v1/models")
    async def models(request: Request, _: Caller) -> dict[str, Any]:
        """The base, the registry's adapters and the fine-tuned models, each adapter with its ``parent``."""
        return await request.app.state.front.models()

    @app.get("/v1/models/{model:path}")
    async def model(model: str, request: Request, _: Caller) -> dict[str, Any]:
        """One model of the list."""
        listed = await request.app.state.front.models()
        found = next((m for m in listed["data"] if m["id"] == model), None)
        if found is None:
            raise APIError(404, f"The model {model!r} does not exist", code="model_not_found", param="model")
        return found

    @app.get("/metrics")
    async def metrics(request: Request, _: Caller) -> Response:
        """Prometheus text: the front door's series by alias and version, then the managed vLLM's own."""
        from prometheus_client import CONTENT_TYPE_LATEST

        engine = await request.app.state.front.engine_metrics()
        return Response(service.monitor.exposition() + engine, media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/tuneship/feedback")
    async def feedback(request: Request, _: Caller) -> dict[str, Any]:
        """Rate or correct a captured answer by its response id (:class:`FeedbackRequest`; any key)."""
        try:
            body = FeedbackRequest.model_validate_json(await request.body())
        except ValidationError as e:
            first = e.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            raise APIError(400, describe_errors(e).removeprefix("invalid settings: "), param=param) from None
        return await run_in_threadpool(service.recorder.feedback, body, _key(request))

    @app.get("/health")
    async def health(request: Request) -> Any:
        """The managed model server's health (503 while it starts)."""
        return await request.app.state.front.forward(request, "/health")
