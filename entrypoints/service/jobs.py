"""Fine-tuning jobs in the database: create, validate, claim, cancel, finish; their events and checkpoints.

Every change of state is one conditional UPDATE (``... WHERE status = 'queued'``), so a cancel or
a pause never gets overwritten by a late success. Workers claim a job with a row lock on
PostgreSQL (``SELECT ... FOR UPDATE SKIP LOCKED``: replicas sharing the database skip each
other's rows instead of waiting) and with the conditional UPDATE on SQLite (one service per file);
either way two workers never take one job twice.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from sqlalchemy import case, select, update
from sqlalchemy.orm import Session, sessionmaker

from tuneship.entrypoints.service.config import Paths
from tuneship.entrypoints.service.db import Checkpoint, Event, FileRecord, Job, now
from tuneship.entrypoints.service.files import UNFINISHED, FileStore, new_id
from tuneship.entrypoints.service.plan import resolve, train_config, write_train_config
from tuneship.entrypoints.service.schemas import APIError, JobCreate, not_found
from tuneship.train.config import TrainConfig
from tuneship.train.preference import PREFERENCE_FORMATS  # what `--method dpo` trains on


def add_event(session: Session, job_id: str, message: str, level: str = "info", **fields: Any) -> None:
    """Append an event to a job (``type="metrics"`` and ``data={...}`` for a metrics event)."""
    session.add(Event(id=new_id("ftevent"), job_id=job_id, message=message, level=level, **fields))


class JobStore:
    """The jobs of one service: the API's side (create, list, cancel) and the workers' (claim, finish)."""

    def __init__(
        self, sessions: sessionmaker, paths: Paths, files: FileStore, base_name: str, defaults: TrainConfig
    ) -> None:
        self.sessions = sessions
        self.paths = paths
        self.files = files
        self.base_name = base_name
        self.defaults = defaults

    def job_dir(self, job_id: str) -> Path:
        return self.paths.jobs / job_id

    # -- the API's side -------------------------------------------------------------------------

    def create(self, body: JobCreate, model_names: tuple[str, ...]) -> Job:
        """Record a job (``validating_files``) after the checks that need no data; 400 with the reason."""
        if body.model not in model_names:
            raise APIError(
                400,
                f"model {body.model!r} cannot be fine-tuned here; this service fine-tunes {self.base_name!r}",
                code="model_not_available",
                param="model",
            )
        method = body.requested()
        for param in ("training_file", "validation_file"):
            file_id = getattr(body, param)
            if file_id is not None and self.files.get(file_id, param).purpose != "fine-tune":
                raise APIError(400, f"{file_id} was not uploaded with purpose fine-tune", param=param)
        job = Job(
            id=new_id("ftjob"),
            model=body.model,
            training_file=body.training_file,
            validation_file=body.validation_file,
            suffix=body.suffix,
            seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
            job_metadata=body.metadata,
            method=method,
            result_files=[],
        )
        with self.sessions.begin() as session:
            session.add(job)
            session.flush()
            add_event(session, job.id, f"Validating training file: {job.training_file}")
        return job

    def get(self, job_id: str) -> Job:
        """The job (404 when there is none)."""
        with self.sessions() as session:
            job = session.scalar(select(Job).where(Job.id == job_id))
        if job is None:
            raise not_found("fine-tuning job", job_id)
        return job

    def list(self, after: str | None, limit: int) -> tuple[list[Job], bool]:
        """Newest first, from after the job ``after``; and whether more follow."""
        query = select(Job).order_by(Job.seq.desc()).limit(limit + 1)
        if after:
            query = query.where(Job.seq < self.get(after).seq)
        with self.sessions() as session:
            jobs = list(session.scalars(query))
        return jobs[:limit], len(jobs) > limit

    def cancel(self, job_id: str) -> Job:
        """Cancel an unfinished job (a running one's worker stops its processes); 400 when it has finished."""
        job, changed = self._transition(
            job_id, Job.status.in_(UNFINISHED), "Job cancelled", status="cancelled", finished_at=now()
        )
        if not changed and job.status != "cancelled":
            raise APIError(400, f"job {job_id} has already {job.status}", code="job_finished")
        return job

    def _page(self, model: Any, job_id: str, after: str | None, limit: int) -> tuple[list[Any], bool]:
        self.get(job_id)
        query = select(model).where(model.job_id == job_id).order_by(model.seq.desc()).limit(limit + 1)
        with self.sessions() as session:
            if after:
                cursor = session.scalar(select(model.seq).where(model.id == after))
                if cursor is None:
                    raise not_found(model.__tablename__.rstrip("s"), after, "after")
                query = query.where(model.seq < cursor)
            rows = list(session.scalars(query))
        return rows[:limit], len(rows) > limit

    def events(self, job_id: str, after: str | None, limit: int) -> tuple[list[Event], bool]:
        """A job's events, newest first."""
        return self._page(Event, job_id, after, limit)

    def checkpoints(self, job_id: str, after: str | None, limit: int) -> tuple[list[Checkpoint], bool]:
        """A job's checkpoints, newest first."""
        return self._page(Checkpoint, job_id, after, limit)

    def fine_tuned(self) -> dict[str, str]:
        """``{public model name: registry name}`` of every succeeded job and its checkpoints.

        The final checkpoint is the job's model; an earlier one is served under its own registry
        name once the job has succeeded (``registry_name``; None when it could not be kept).
        """
        with self.sessions() as session:
            served = (Job.status == "succeeded") & Job.registry_name.is_not(None)
            rows = session.execute(select(Job.fine_tuned_model, Job.registry_name).where(served)).all()
            checkpoints = session.execute(
                select(
                    Checkpoint.fine_tuned_model_checkpoint,
                    Job.registry_name,
                    Checkpoint.registry_name,
                    Checkpoint.final,
                )
                .join(Job, Job.id == Checkpoint.job_id)
                .where(served)
            ).all()
        names = {public: name for public, name in rows if public}
        for public, job_name, own_name, final in checkpoints:
            if final or own_name:
                names[public] = job_name if final else own_name
        return names

    def serve_checkpoint(self, job_id: str, step: int, registry_name: str) -> None:
        """Record that a job's checkpoint at ``step`` is in the registry as ``registry_name``."""
        with self.sessions.begin() as session:
            session.execute(
                update(Checkpoint)
                .where(Checkpoint.job_id == job_id, Checkpoint.step_number == step)
                .values(registry_name=registry_name)
            )

    # -- the workers' side ----------------------------------------------------------------------

    def advance_validations(self) -> None:
        """Move each ``validating_files`` job whose files have a verdict on: ``queued``, or ``failed``."""
        with self.sessions() as session:
            waiting = list(session.scalars(select(Job).where(Job.status == "validating_files")))
        for job in waiting:
            verdicts = self._verdicts(job)
            if verdicts is None:
                continue  # a preflight is still running
            error, resolved = self._validate(job, verdicts)
            with self.sessions.begin() as session:
                values: dict[str, Any] = {"status": "failed", "error": error, "finished_at": now()}
                if error is None:
                    values = {"status": "queued", "resolved": resolved}
                done = session.execute(
                    update(Job).where(Job.id == job.id, Job.status == "validating_files").values(**values)
                ).rowcount
                if done and error is None:
                    add_event(session, job.id, "Files validated, moving job to queued state")
                elif done:
                    add_event(session, job.id, f"Validation failed: {error['message']}", level="error")

    def _verdicts(self, job: Job) -> dict[str, FileRecord] | None:
        found = {}
        for param in ("training_file", "validation_file"):
            file_id = getattr(job, param)
            if file_id is None:
                continue
            with self.sessions() as session:
                record = session.scalar(select(FileRecord).where(FileRecord.id == file_id))
            if record is not None and record.preflight_state != "done":
                return None
            found[param] = record
        return found

    def _validate(self, job: Job, records: dict[str, FileRecord | None]) -> tuple[dict | None, dict | None]:
        """(error, None) when a file is refused; else (None, the resolved method), settings written."""
        for param, record in records.items():
            if record is None:
                return _error(param, f"{getattr(job, param)} was deleted before the job started"), None
            verdict = record.preflight or {}
            if not verdict.get("passed"):
                count = verdict.get("problem_count", 0)
                reasons = "; ".join(verdict.get("problems", [])[:20])
                more = f" (and {count - 20} more)" if count > 20 else ""
                return _error(param, f"{record.filename} has {count} problem(s): {reasons}{more}"), None
            pairs = verdict.get("format") in PREFERENCE_FORMATS
            if pairs != (job.method["type"] == "dpo"):
                wanted = (
                    "preference pairs" if job.method["type"] == "dpo" else "examples, not preference pairs"
                )
                return _error(
                    param, f"{record.filename}: method {job.method['type']} trains on {wanted}"
                ), None
        training = records["training_file"]
        assert training is not None and training.preflight is not None
        resolved = resolve(job.method, training.preflight["examples"], self.defaults)
        validation = records.get("validation_file")
        config = train_config(
            self.defaults,
            resolved,
            training.preflight["examples"],
            self.job_dir(job.id),
            job.seed,
            self.files.path(training),
            self.files.path(validation) if validation else None,
        )
        write_train_config(config, self.job_dir(job.id))
        return None, resolved

    def claim(self, worker: str) -> Job | None:
        """Take the oldest queued job for ``worker`` (None when none is left)."""
        if self.sessions.kw["bind"].dialect.name == "postgresql":
            return self._claim_locked(worker)
        while True:
            with self.sessions() as session:
                candidate = session.scalar(
                    select(Job.id).where(Job.status == "queued").order_by(Job.seq).limit(1)
                )
            if candidate is None:
                return None
            with self.sessions.begin() as session:
                taken = self._start(session, candidate, worker, Job.status == "queued")
            if taken:
                return self.get(candidate)

    def _claim_locked(self, worker: str) -> Job | None:
        """PostgreSQL: lock the oldest queued row no other transaction holds, and start it."""
        with self.sessions.begin() as session:
            candidate = session.scalar(
                select(Job.id)
                .where(Job.status == "queued")
                .order_by(Job.seq)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if candidate is None:
                return None
            self._start(session, candidate, worker, Job.status == "queued")
        return self.get(candidate)

    def _start(self, session: Session, job_id: str, worker: str, condition: Any) -> bool:
        taken = session.execute(
            update(Job)
            .where(Job.id == job_id, condition)
            .values(status="running", worker=worker, started_at=now(), heartbeat_at=now(),
                    attempts=Job.attempts + 1)
        ).rowcount  # fmt: skip
        if taken:
            add_event(session, job_id, "Fine-tuning job started")
        return bool(taken)

    def pause(self, job_id: str) -> Job:
        """Pause a queued or running job (its worker stops the training); 400 in any other state."""
        job, changed = self._transition(
            job_id,
            Job.status.in_(("queued", "running")),
            "Job paused",
            status="paused",
            # A paused run is not a lost one: it does not count against max_attempts.
            attempts=case((Job.status == "running", Job.attempts - 1), else_=Job.attempts),
        )
        if not changed:
            raise APIError(400, f"job {job_id} is {job.status}; only a queued or running job can be paused",
                           code="invalid_job_state")  # fmt: skip
        return job

    def resume(self, job_id: str) -> Job:
        """Queue a paused job again (it continues from its last checkpoint); 400 when it is not paused."""
        job, changed = self._transition(
            job_id, Job.status == "paused", "Job resumed, moving job to queued state", status="queued"
        )
        if not changed:
            raise APIError(400, f"job {job_id} is {job.status}; only a paused job can be resumed",
                           code="invalid_job_state")  # fmt: skip
        return job

    def _transition(self, job_id: str, condition: Any, event: str, **values: Any) -> tuple[Job, bool]:
        """One conditional UPDATE of a job and its event: (the job afterwards, whether it changed)."""
        with self.sessions.begin() as session:
            changed = session.execute(
                update(Job).where(Job.id == job_id, condition).values(**values)
            ).rowcount
            if changed:
                add_event(session, job_id, event)
        return self.get(job_id), bool(changed)

    def update_running(self, job_id: str, **values: Any) -> bool:
        """Set fields of a job that is still running (a heartbeat, a pid); False when it is not."""
        with self.sessions.begin() as session:
            return bool(
                session.execute(
                    update(Job).where(Job.id == job_id, Job.status == "running").values(**values)
                ).rowcount
            )

    def finish(self, job_id: str, status: str, message: str, level: str = "info", **values: Any) -> bool:
        """End a running job (``succeeded`` or ``failed``) with an event; False when it was cancelled."""
        with self.sessions.begin() as session:
            done = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "running")
                .values(status=status, finished_at=now(), pid=None, **values)
            ).rowcount
            if done:
                add_event(session, job_id, message, level=level)
        return bool(done)

    def requeue_or_fail(self, job_id: str, reason: str, max_attempts: int) -> None:
        """A run that was lost (not refused): queue the job again, or fail it after ``max_attempts``."""
        job = self.get(job_id)
        if job.attempts >= max_attempts:
            error = {
                "code": "training_lost",
                "message": f"{reason} (after {job.attempts} attempts)",
                "param": None,
            }
            self.finish(job_id, "failed", f"Job failed: {reason}", level="error", error=error)
            return
        with self.sessions.begin() as session:
            if session.execute(
                update(Job).where(Job.id == job_id, Job.status == "running").values(status="queued", pid=None)
            ).rowcount:
                add_event(session, job_id, f"{reason}; the job is queued again", level="warn")

    def release(self, job_id: str, reason: str) -> None:
        """Give a running job back to the queue, uncounted (the service stops; it resumes on start)."""
        with self.sessions.begin() as session:
            if session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "running")
                .values(status="queued", pid=None, attempts=Job.attempts - 1)
            ).rowcount:
                add_event(session, job_id, f"{reason}; the job is queued again", level="warn")

    def running_on(self, stale_before: int | None = None) -> list[Job]:
        """Running jobs (whose last heartbeat is before ``stale_before``, when given)."""
        query = select(Job).where(Job.status == "running")
        if stale_before is not None:
            query = query.where(Job.heartbeat_at < stale_before)
        with self.sessions() as session:
            return list(session.scalars(query))

    def add_event(self, job_id: str, message: str, level: str = "info", **fields: Any) -> None:
        """Append an event to a job."""
        with self.sessions.begin() as session:
            add_event(session, job_id, message, level, **fields)

    def add_checkpoint(
        self, job_id: str, step: int, metrics: dict, name: str, path: str, final: bool
    ) -> None:
        """Record a checkpoint (once per step) and say so in an event."""
        with self.sessions.begin() as session:
            known = session.scalar(
                select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.step_number == step)
            )
            if known is not None:  # the last save is the final model: it is served from the run now
                if final:
                    known.final, known.path, known.metrics = True, path, metrics
                return
            session.add(
                Checkpoint(
                    id=new_id("ftckpt"),
                    job_id=job_id,
                    step_number=step,
                    metrics=metrics,
                    fine_tuned_model_checkpoint=name,
                    path=path,
                    final=final,
                )
            )
            add_event(session, job_id, f"Checkpoint created at step {step}")


def _error(param: str, message: str) -> dict[str, Any]:
    code = "invalid_training_file" if param == "training_file" else "invalid_validation_file"
    return {"code": code, "message": message, "param": param}
