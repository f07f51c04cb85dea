"""Files: records of uploads (and job results), their bytes on disk, and the training preflight's verdict.

An uploaded fine-tuning file is checked by ``tuneship data check`` -- the preflight training runs,
with the service's base model and training settings -- in a subprocess of its own; the verdict
(passed, format, examples, ``file:line: reason`` of every bad row) is kept with the file.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import sessionmaker

from tuneship.entrypoints.service.config import Paths
from tuneship.entrypoints.service.db import FileRecord, Job
from tuneship.entrypoints.service.process import CLI, ProcessGroup, error_line
from tuneship.entrypoints.service.schemas import APIError, not_found
from tuneship.entrypoints.service.upload import Upload, stored_suffix

log = logging.getLogger(__name__)

UNFINISHED = ("validating_files", "queued", "running", "paused")
KEPT_PROBLEMS = 200  # file:line reasons kept with a file (the count is kept too)


def new_id(prefix: str) -> str:
    """An OpenAI-style object id: ``file-...``, ``ftjob-...``."""
    return f"{prefix}-{secrets.token_hex(12)}"


class FileStore:
    """File records and their bytes under ``HOME/files`` (named by id, never by the client's name)."""

    def __init__(self, sessions: sessionmaker, paths: Paths) -> None:
        self.sessions = sessions
        self.paths = paths

    def add_upload(self, upload: Upload, purpose: str) -> FileRecord:
        """Keep a received upload: move it into place and record it (its preflight pending)."""
        assert upload.path is not None and upload.filename is not None
        file_id = new_id("file")
        stored = file_id + stored_suffix(upload.filename)
        os.replace(upload.path, self.paths.files / stored)
        record = FileRecord(
            id=file_id, filename=upload.filename, stored=stored, bytes=upload.size, purpose=purpose
        )
        with self.sessions.begin() as session:
            session.add(record)
        return record

    def add_result(self, filename: str, text: str) -> FileRecord:
        """A job's result file (purpose ``fine-tune-results``), processed from the start."""
        file_id = new_id("file")
        stored = file_id + Path(filename).suffix
        data = text.encode()
        (self.paths.files / stored).write_bytes(data)
        record = FileRecord(
            id=file_id,
            filename=filename,
            stored=stored,
            bytes=len(data),
            purpose="fine-tune-results",
            status="processed",
            preflight_state="done",
        )
        with self.sessions.begin() as session:
            session.add(record)
        return record

    def get(self, file_id: str, param: str | None = None) -> FileRecord:
        """The record of ``file_id`` (404 when there is none)."""
        with self.sessions() as session:
            record = session.scalar(select(FileRecord).where(FileRecord.id == file_id))
        if record is None:
            raise not_found("file", file_id, param)
        return record

    def path(self, record: FileRecord) -> Path:
        """Where the file's bytes are."""
        return self.paths.files / record.stored

    def list(
        self, after: str | None, limit: int, purpose: str | None, order: str
    ) -> tuple[list[FileRecord], bool]:
        """A page of records (``order`` by creation, ``after`` an id) and whether more follow."""
        newest_first = order != "asc"
        query = select(FileRecord)
        if purpose:
            query = query.where(FileRecord.purpose == purpose)
        if after:
            cursor = self.get(after, "after").seq
            query = query.where(FileRecord.seq < cursor if newest_first else FileRecord.seq > cursor)
        query = query.order_by(FileRecord.seq.desc() if newest_first else FileRecord.seq).limit(limit + 1)
        with self.sessions() as session:
            records = list(session.scalars(query))
        return records[:limit], len(records) > limit

    def delete(self, file_id: str) -> None:
        """Remove a file and its bytes; refused while an unfinished job uses it."""
        record = self.get(file_id)
        with self.sessions.begin() as session:
            user = session.scalar(
                select(Job.id).where(
                    Job.status.in_(UNFINISHED),
                    (Job.training_file == file_id) | (Job.validation_file == file_id),
                )
            )
            if user is not None:
                raise APIError(
                    409, f"{file_id} is used by {user}, which has not finished", code="file_in_use"
                )
            session.delete(session.merge(record))
        self.path(record).unlink(missing_ok=True)


class Preflight(threading.Thread):
    """Checks uploaded fine-tuning files one at a time, each in a ``tuneship data check`` subprocess."""

    def __init__(self, sessions: sessionmaker, paths: Paths, stop: threading.Event) -> None:
        super().__init__(name="tuneship-preflight", daemon=True)
        self.sessions = sessions
        self.paths = paths
        self.stop_event = stop
        self.kick = threading.Event()
        self.current: ProcessGroup | None = None

    def run(self) -> None:
        while not self.stop_event.is_set():
            record = self._claim()
            if record is None:
                self.kick.wait(1.0)
                self.kick.clear()
                continue
            try:
                verdict = self.check(record)
            except Exception as e:  # noqa: BLE001 -- a preflight that breaks must not stop the others
                log.exception("preflight of %s failed", record.id)
                verdict = _verdict_of_error(f"the check itself failed: {e}")
            if not self.stop_event.is_set():
                self._store(record.id, verdict)

    def _claim(self) -> FileRecord | None:
        with self.sessions.begin() as session:
            candidate = session.scalar(
                select(FileRecord)
                .where(FileRecord.preflight_state == "pending", FileRecord.purpose == "fine-tune")
                .order_by(FileRecord.seq)
                .limit(1)
            )
            if candidate is None:
                return None
            claimed = session.execute(
                update(FileRecord)
                .where(FileRecord.id == candidate.id, FileRecord.preflight_state == "pending")
                .values(preflight_state="running")
            ).rowcount
        return candidate if claimed else None

    def check(self, record: FileRecord) -> dict[str, Any]:
        """Run the preflight on a stored file; the verdict with the client's filename in each reason."""
        path = self.paths.files / record.stored
        log_path = self.paths.logs / f"preflight-{record.id}.log"
        out = self.paths.logs / f"preflight-{record.id}.json"
        args = [*CLI, "data", "check", str(path), "--config", str(self.paths.train_defaults), "--json"]
        group = ProcessGroup(args, log_path, stdout=out)
        self.current = group
        while group.poll() is None and not self.stop_event.wait(0.2):
            pass
        if group.poll() is None:
            group.stop()
            return _verdict_of_error("the service stopped during the check")
        self.current = None
        try:
            check = json.loads(out.read_text())
        except (OSError, ValueError):
            reason = error_line(group.log_lines()) or "the data check did not finish (see its log)"
            return _verdict_of_error(reason.replace(str(path), record.filename))
        problems = [p.replace(str(path), record.filename) for p in check.get("problems", [])]
        return {
            "passed": bool(check.get("passed")),
            "format": check.get("format"),
            "rows": check.get("rows"),
            "examples": check.get("examples"),
            "problem_count": len(problems),
            "problems": problems[:KEPT_PROBLEMS],
        }

    def _store(self, file_id: str, verdict: dict[str, Any]) -> None:
        details = None
        if not verdict["passed"]:
            first = "; ".join(verdict["problems"][:3]) or "no usable rows"
            details = f"{verdict['problem_count']} problem(s): {first}"
        with self.sessions.begin() as session:
            session.execute(
                update(FileRecord)
                .where(FileRecord.id == file_id)
                .values(
                    preflight_state="done",
                    preflight=verdict,
                    status="processed" if verdict["passed"] else "error",
                    status_details=details,
                )
            )

    def recover(self) -> None:
        """Checks cut off by a stop start again (one service per SQLite file)."""
        with self.sessions.begin() as session:
            session.execute(
                update(FileRecord)
                .where(FileRecord.preflight_state == "running")
                .values(preflight_state="pending")
            )


def _verdict_of_error(reason: str) -> dict[str, Any]:
    return {
        "passed": False,
        "format": None,
        "rows": 0,
        "examples": 0,
        "problem_count": 1,
        "problems": [reason],
    }
