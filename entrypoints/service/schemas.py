"""HTTP types of the service: OpenAI-shaped errors, request models, and the OpenAI objects it returns.

Responses are built with the ``openai`` SDK's own types (``FileObject``, ``FineTuningJob``, ...),
so a field the SDK does not know, or a missing one, fails here rather than in a client.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from openai.types import FileObject
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tuneship.entrypoints.service.db import Checkpoint, Event, FileRecord, Job

ORGANIZATION = "tuneship"
SUFFIX = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # it becomes part of a model name: no ':' or '/'


class APIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or ("server_error" if status >= 500 else "invalid_request_error")

    def body(self) -> dict[str, Any]:
        """The JSON body of the error response."""
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return {"error": error}


def not_found(kind: str, id: str, param: str | None = None) -> APIError:
    """404 for an unknown object id."""
    return APIError(404, f"No such {kind}: {id!r}", code=f"{kind}_not_found", param=param)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Auto = Literal["auto"]


class Hyperparameters(_Strict):
    """Training hyperparameters, each ``"auto"`` (the service picks and reports its pick) or a value."""

    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] = Field("auto", description="passes over the data")
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] = Field("auto", description="examples per step")
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=100)] = Field(
        "auto", description="times the service's base learning rate"
    )
    beta: Auto | Annotated[float, Field(gt=0, le=10)] = Field(
        "auto", description="dpo: how far the model may move from the reference"
    )


class MethodParams(_Strict):
    """One method's settings: its hyperparameters."""

    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class MethodSpec(_Strict):
    """``method`` of a job: ``supervised`` (a LoRA on the data) or ``dpo`` (a LoRA on preference pairs)."""

    type: Literal["supervised", "dpo"] = Field(description="supervised or dpo (reinforcement: not offered)")
    supervised: MethodParams | None = None
    dpo: MethodParams | None = None


class JobCreate(_Strict):
    """The body of ``POST /v1/fine_tuning/jobs``, as OpenAI's SDK sends it."""

    model: str = Field(description="the base model to fine-tune (the service's base)")
    training_file: str = Field(description="id of an uploaded file with purpose fine-tune")
    validation_file: str | None = Field(None, description="id of a held-out file")
    suffix: str | None = Field(None, description="up to 64 characters added to the fine-tuned model's name")
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = Field(None, description="random seed")
    metadata: dict[str, str] | None = Field(None, description="up to 16 key-value pairs kept with the job")
    method: MethodSpec | None = Field(None, description="the training method and its hyperparameters")
    hyperparameters: Hyperparameters | None = Field(None, description="legacy: supervised hyperparameters")
    integrations: list[dict] | None = Field(None, description="not offered: must be empty")

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, suffix: str | None) -> str | None:
        if suffix is not None and not SUFFIX.match(suffix):
            raise ValueError("use up to 64 letters, digits, '.', '_' or '-'")
        return suffix

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, metadata: dict[str, str] | None) -> dict[str, str] | None:
        if metadata and (len(metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in metadata.items())):
            raise ValueError("at most 16 pairs, keys up to 64 characters, values up to 512")
        return metadata

    @field_validator("integrations")
    @classmethod
    def _integrations(cls, integrations: list[dict] | None) -> list[dict] | None:
        if integrations:
            raise ValueError("integrations are not offered by this service")
        return integrations

    def requested(self) -> dict[str, Any]:
        """``{"type", "hyperparameters"}``: the method asked for (legacy ``hyperparameters`` folded in)."""
        kind = self.method.type if self.method else "supervised"
        params = getattr(self.method, kind, None) if self.method else None
        given = params.hyperparameters if params else None
        if given is not None and self.hyperparameters is not None and given != self.hyperparameters:
            raise APIError(
                400,
                "hyperparameters: give them in method, not also at the top level",
                param="hyperparameters",
            )
        chosen = given or self.hyperparameters or Hyperparameters()
        if kind != "dpo" and chosen.beta != "auto":
            raise APIError(400, "beta is a dpo hyperparameter", param="method")
        return {"type": kind, "hyperparameters": chosen.model_dump()}


def file_object(record: FileRecord) -> dict[str, Any]:
    """The OpenAI ``file`` object of a record."""
    return FileObject(
        id=record.id,
        bytes=record.bytes,
        created_at=record.created_at,
        filename=record.filename,
        object="file",
        purpose=record.purpose,  # type: ignore[arg-type]
        status=record.status,  # type: ignore[arg-type]
        status_details=record.status_details,
    ).model_dump(mode="json")


def _hyperparameters(job: Job) -> dict[str, Any]:
    values = (job.resolved or job.method)["hyperparameters"]
    if job.method["type"] != "dpo":
        values = {k: v for k, v in values.items() if k != "beta"}
    return values


def job_object(job: Job) -> dict[str, Any]:
    """The OpenAI ``fine_tuning.job`` object of a record (hyperparameters as resolved, once they are)."""
    kind = job.method["type"]
    hyperparameters = _hyperparameters(job)
    legacy = {k: v for k, v in hyperparameters.items() if k != "beta"}
    return FineTuningJob.model_validate(
        {
            "id": job.id,
            "created_at": job.created_at,
            "error": job.error,
            "fine_tuned_model": job.fine_tuned_model,
            "finished_at": job.finished_at,
            "hyperparameters": legacy,
            "model": job.model,
            "object": "fine_tuning.job",
            "organization_id": ORGANIZATION,
            "result_files": list(job.result_files or []),
            "seed": job.seed,
            # The SDK's model predates "paused" (its API answers it): validated as queued, sent as is.
            "status": "queued" if job.status == "paused" else job.status,
            "trained_tokens": job.trained_tokens,
            "training_file": job.training_file,
            "validation_file": job.validation_file,
            "metadata": job.job_metadata,
            "method": {"type": kind, kind: {"hyperparameters": hyperparameters}},
        }
    ).model_dump(mode="json", exclude_unset=True) | {"status": job.status}


def event_object(event: Event) -> dict[str, Any]:
    """The OpenAI ``fine_tuning.job.event`` object of a record."""
    return FineTuningJobEvent(
        id=event.id,
        created_at=event.created_at,
        level=event.level,  # type: ignore[arg-type]
        message=event.message,
        object="fine_tuning.job.event",
        data=event.data or {},
        type=event.type,  # type: ignore[arg-type]
    ).model_dump(mode="json")


def checkpoint_object(checkpoint: Checkpoint) -> dict[str, Any]:
    """The OpenAI ``fine_tuning.job.checkpoint`` object of a record."""
    return FineTuningJobCheckpoint(
        id=checkpoint.id,
        created_at=checkpoint.created_at,
        fine_tuned_model_checkpoint=checkpoint.fine_tuned_model_checkpoint,
        fine_tuning_job_id=checkpoint.job_id,
        metrics={"step": checkpoint.step_number, **(checkpoint.metrics or {})},
        object="fine_tuning.job.checkpoint",
        step_number=checkpoint.step_number,
    ).model_dump(mode="json")


def page(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A cursor page as OpenAI lists: ``{"object": "list", "data", "has_more", "first_id", "last_id"}``."""
    return {
        "object": "list",
        "data": items,
        "has_more": has_more,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
    }
