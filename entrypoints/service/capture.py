"""Captured traffic: chat completions of the aliases that opted in, stored redacted, and feedback on them.

``tuneship adapters capture tickets --on`` turns capture on for an alias (a ``capture_settings``
row, read again at most once a second by every replica, like rollouts). The front door then
hands each chat completion request to that alias a :class:`Capture`, which collects the answer's
text, response id and finish reason from the bytes as they pass (a stream is neither held nor
slowed). When the answer ends, :class:`Recorder` queues it; its own thread redacts
(:mod:`~.redaction`) and writes the rows in batches, so the event loop never waits for the
database or the redaction. ``POST /v1/tuneship/feedback`` (:class:`FeedbackRequest`) rates or
corrects a captured answer by its response id; ``tuneship data export --captured`` turns both
into training data.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field, model_validator
from sqlalchemy import insert, select
from sqlalchemy.orm import sessionmaker

from tuneship.entrypoints.service.batches import BatchWriter
from tuneship.entrypoints.service.db import ApiKey, CapturedResponse, CaptureSetting, Feedback, now
from tuneship.entrypoints.service.keys import digest
from tuneship.entrypoints.service.redaction import Redactor
from tuneship.entrypoints.service.schemas import APIError
from tuneship.entrypoints.service.sse import AnswerReader, loads

log = logging.getLogger(__name__)
TTL = 1.0  # seconds a replica may go on with its last reading of which aliases are captured
BATCH = 200  # rows per insert at most
BODY_LIMIT = 4 << 20  # bytes of a non-streamed answer read for its text (a longer one is not captured)
WAIT_FOR_ROW = 5.0  # seconds feedback waits for its answer's row when that is still queued here


class FeedbackRequest(BaseModel):
    """``POST /v1/tuneship/feedback``: a rating and/or a corrected answer for a captured response.

    At least one of ``rating`` and ``correction``. Feedback can be given more than once; the
    export uses the latest rating and the latest correction. Answers: 200 with the stored
    feedback (``{"object": "tuneship.feedback", "response_id", "rating", "correction",
    "created_at"}``, the correction as stored: redacted); 404 (``code: response_not_found``) for
    an id that no captured answer has (an alias without capture, or a mistyped id); 400 for a
    bad body.
    """

    response_id: str = Field(
        min_length=1, max_length=128, description="the answer's id as the client got it: chatcmpl-..."
    )
    rating: int | None = Field(
        None, ge=-1, le=1, description="-1: bad answer, 0: neutral, 1: good answer (thumbs down/up)"
    )
    correction: str | None = Field(
        None, min_length=1, description="the answer it should have given: the assistant turn to train on"
    )

    @model_validator(mode="after")
    def _something(self) -> FeedbackRequest:
        if self.rating is None and self.correction is None:
            raise ValueError("give a rating (-1, 0 or 1) and/or a correction")
        return self


class CaptureTable:
    """The aliases whose traffic is captured, read from the database at most every ``ttl`` seconds."""

    def __init__(self, sessions: sessionmaker, ttl: float = TTL) -> None:
        self.sessions = sessions
        self.ttl = ttl
        self.aliases: frozenset[str] = frozenset()
        self._read_at = float("-inf")
        self._reading: asyncio.Future | None = None

    def load(self) -> None:
        """Read them now (blocking: off the event loop). A reading that fails keeps the last."""
        try:
            with self.sessions() as session:
                rows = session.scalars(select(CaptureSetting.alias).where(CaptureSetting.enabled)).all()
        except Exception as e:  # noqa: BLE001 (a bad reading never stops traffic)
            log.warning("Captured aliases not read again (using the last reading): %s", e)
            return
        self.aliases = frozenset(rows)

    async def captured(self, alias: str) -> bool:
        """Whether ``alias``'s traffic is captured (on a reading at most about ``ttl`` old)."""
        if self._reading is None or self._reading.done():
            if time.monotonic() - self._read_at >= self.ttl:
                self._read_at = time.monotonic()
                self._reading = asyncio.ensure_future(asyncio.to_thread(self.load))
        if self._reading is not None and not self._reading.done():
            await asyncio.shield(self._reading)
        return alias in self.aliases


@dataclass
class Capture(AnswerReader):
    """One chat completion as it passes: the request's messages, then the answer's text (choice 0)."""

    alias: str
    version: str
    user: str | None
    messages: list
    streamed: bool = False
    status: int = 0
    response_id: str | None = None
    finish_reason: str | None = None
    parts: list[str] = field(default_factory=list)
    _pending: bytes = b""

    body_limit = BODY_LIMIT

    def _overflow(self) -> None:
        self.status = 0  # too long to capture
        self._pending = b""

    def _event(self, event: Any) -> None:
        if not isinstance(event, dict) or "error" in event:
            return
        self.response_id = self.response_id or event.get("id")
        for choice in event.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            text = (choice.get("delta") or {}).get("content")
            if isinstance(text, str):
                self.parts.append(text)
            self.finish_reason = choice.get("finish_reason") or self.finish_reason

    def row(self) -> dict | None:
        """The row to store (not yet redacted), or None when the answer is nothing to keep."""
        if self.status != 200:
            return None
        if not self.streamed:
            body = loads(self._pending)
            if not isinstance(body, dict):
                return None
            self.response_id = body.get("id")
            choice = next((c for c in body.get("choices") or [] if c.get("index", 0) == 0), {})
            content = (choice.get("message") or {}).get("content")
            self.parts = [content] if isinstance(content, str) else []
            self.finish_reason = choice.get("finish_reason")
        if self.streamed and self.finish_reason is None:
            return None  # the stream ended without finishing (an error event)
        if not isinstance(self.response_id, str) or not self.parts:
            return None  # no id to give feedback on, or no text (tool calls only)
        return {
            "response_id": self.response_id, "alias": self.alias, "version": self.version,
            "user": self.user, "messages": self.messages, "answer": "".join(self.parts),
            "finish_reason": self.finish_reason, "created_at": now(),
        }  # fmt: skip


class Recorder:
    """The thread that redacts and writes captured answers in batches (owned: :meth:`start`, :meth:`stop`)."""

    def __init__(self, sessions: sessionmaker, redactor: Redactor) -> None:
        self.sessions = sessions
        self.redactor = redactor
        self.table = CaptureTable(sessions)
        self._queued: set[str] = set()  # response ids queued or being written
        self._written = threading.Condition()
        self.rows = BatchWriter("tuneship-capture", self._write, BATCH)

    def keep(self, capture: Capture) -> None:
        """Queue a finished answer (cheap, never blocks)."""
        row = capture.row()
        if row is None:
            return
        with self._written:
            self._queued.add(row["response_id"])
        self.rows.put(row)

    def wait_written(self, response_id: str, timeout: float = WAIT_FOR_ROW) -> None:
        """Block until ``response_id``'s row is written, if it is queued here (feedback right after)."""
        with self._written:
            self._written.wait_for(lambda: response_id not in self._queued, timeout=timeout)

    def start(self) -> None:
        self.rows.start()

    def stop(self) -> None:
        """Write what is queued, then end the thread."""
        self.rows.stop()

    def _write(self, rows: list[dict]) -> None:
        try:
            redacted = [self._redacted(row) for row in rows]
            with self.sessions.begin() as session:
                session.execute(insert(CapturedResponse), redacted)
        except Exception as e:  # noqa: BLE001 (captures lost, traffic unaffected)
            log.warning("%d captured answers not written: %s", len(rows), e)
        with self._written:
            self._queued.difference_update(row["response_id"] for row in rows)
            self._written.notify_all()

    def _redacted(self, row: dict) -> dict:
        return {**row, "messages": self.redactor.messages(row["messages"]),
                "answer": self.redactor.text(row["answer"])}  # fmt: skip

    def feedback(self, body: FeedbackRequest, key: str) -> dict[str, Any]:
        """Store feedback on a captured answer, from the holder of ``key`` (blocking: off the event loop)."""
        self.wait_written(body.response_id)
        correction = None if body.correction is None else self.redactor.text(body.correction)
        with self.sessions.begin() as session:
            found = session.scalar(
                select(CapturedResponse.seq).where(CapturedResponse.response_id == body.response_id)
            )
            if found is None:
                raise APIError(
                    404,
                    f"No captured response {body.response_id!r} (is capture on for its alias? "
                    "tuneship adapters capture ALIAS --on)",
                    code="response_not_found",
                    param="response_id",
                )
            actor = session.scalar(select(ApiKey.name).where(ApiKey.key_sha256 == digest(key)))
            record = Feedback(
                response_id=body.response_id, rating=body.rating, correction=correction, actor=actor
            )
            session.add(record)
        return {"object": "tuneship.feedback", "response_id": record.response_id, "rating": record.rating,
                "correction": record.correction, "created_at": record.created_at}  # fmt: skip


def set_capture(sessions: sessionmaker, alias: str, enabled: bool) -> bool:
    """Turn capture of ``alias`` on or off; returns whether it was on before."""
    with sessions.begin() as session:
        setting = session.scalar(select(CaptureSetting).where(CaptureSetting.alias == alias))
        before = bool(setting and setting.enabled)
        if setting is None:
            session.add(CaptureSetting(alias=alias, enabled=enabled))
        else:
            setting.enabled, setting.changed_at = enabled, now()
    return before


async def start_capture(
    recorder: Recorder | None, payload: Any, alias: str | None, version: str | None, user: str | None
) -> Capture | None:
    """A :class:`Capture` for a chat completion request to a captured alias (None otherwise)."""
    if recorder is None or not alias or not version or not isinstance(payload, dict):
        return None
    messages = payload.get("messages")
    if not isinstance(messages, list) or not await recorder.table.captured(alias):
        return None
    return Capture(alias, version, user, messages)


async def captured(
    chunks: AsyncIterator[bytes], capture: Capture, recorder: Recorder
) -> AsyncIterator[bytes]:
    """The answer as it is, collected on the way; kept when it is whole (:meth:`Capture.row`: a
    stream that reached its finish_reason, a body that parses). Also when the client hangs up right
    after the last event: the openai SDK closes the connection at ``data: [DONE]``, which can cancel
    this before the upstream's end of body arrives; a stream cut before its end is still not kept."""
    try:
        async for chunk in chunks:
            capture.feed(chunk)
            yield chunk
    finally:
        capture.feed(b"\n")
        recorder.keep(capture)
