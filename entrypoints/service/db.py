"""The service's records in SQL (SQLAlchemy 2), migrated by Alembic when the service opens them.

SQLite (one file under the service's home) by default; any SQLAlchemy URL otherwise (PostgreSQL
for several replicas). Every table change is an Alembic revision in ``migrations/versions``; a
test checks that the revisions and these models agree.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, Text, create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x7475_6E65  # PostgreSQL advisory lock held while migrating ("tune")


def now() -> int:
    """Unix seconds, as OpenAI's objects carry them."""
    return int(time.time())


class Base(DeclarativeBase):
    """The service's tables."""


class ApiKey(Base):
    """A bearer key: only its SHA-256 is stored; ``prefix`` helps a person tell keys apart."""

    __tablename__ = "api_keys"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[int] = mapped_column(Integer, default=now)


class FileRecord(Base):
    """An uploaded file (or a job's result file). ``filename`` is the client's, metadata only."""

    __tablename__ = "files"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    filename: Mapped[str] = mapped_column(String(256))
    stored: Mapped[str] = mapped_column(String(256))  # the name under HOME/files, chosen by the service
    bytes: Mapped[int] = mapped_column(Integer)
    purpose: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="uploaded")  # uploaded|processed|error
    status_details: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The training preflight: pending|running|done, and its verdict (passed, format, examples, problems).
    preflight_state: Mapped[str] = mapped_column(String(16), default="pending")
    preflight: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now)


class Job(Base):
    """A fine-tuning job in OpenAI's schema, plus what a worker needs to run and recover it."""

    __tablename__ = "jobs"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    model: Mapped[str] = mapped_column(String(256))
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(Integer)
    job_metadata: Mapped[dict | None] = mapped_column("metadata", JSON, nullable=True)
    # {"type": "supervised"|"dpo", "hyperparameters": {...}}: as requested, then as resolved.
    method: Mapped[dict] = mapped_column(JSON)
    resolved: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(32), index=True, default="validating_files")
    error: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(512), nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    result_files: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    started_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)  # who claimed it
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)  # its training process group
    heartbeat_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    registry_name: Mapped[str | None] = mapped_column(String(128), nullable=True)  # served as


class Event(Base):
    """A job's status or metrics event; ``seq`` orders them (newest first in lists)."""

    __tablename__ = "events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    level: Mapped[str] = mapped_column(String(8), default="info")
    message: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16), default="message")  # message|metrics
    data: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class Checkpoint(Base):
    """A checkpoint of a job: its step, metrics and the model name it is (or will be) served as."""

    __tablename__ = "checkpoints"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(512))
    path: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    final: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    # The registry name it is served under once its job succeeded (None: not servable, e.g. gone).
    registry_name: Mapped[str | None] = mapped_column(String(128), nullable=True)


class AliasChange(Base):
    """An audit record of an alias: who moved it (or started, promoted, aborted a rollout of it), why.

    ``action``: promote | rollback | rollout_start | rollout_promote | rollout_abort; ``data``: what
    the action measured or set (the gate's verdict, a rollout's share, ``forced``).
    """

    __tablename__ = "alias_changes"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alias: Mapped[str] = mapped_column(String(128), index=True)
    action: Mapped[str] = mapped_column(String(32))
    from_version: Mapped[str | None] = mapped_column(String(160), nullable=True)
    to_version: Mapped[str | None] = mapped_column(String(160), nullable=True)
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    data: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now)


class Rollout(Base):
    """A canary: ``percent`` of the alias's traffic goes to ``candidate``, the rest to ``current``.

    ``state``: active (one per alias at most) | promoted | aborted. ``gate``: its thresholds and
    the offline checks measured at start (:mod:`~tuneship.entrypoints.service.gate`).
    """

    __tablename__ = "rollouts"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alias: Mapped[str] = mapped_column(String(128), index=True)
    current: Mapped[str] = mapped_column(String(160))
    candidate: Mapped[str] = mapped_column(String(160))
    percent: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16), index=True, default="active")
    gate: Mapped[dict] = mapped_column(JSON, default=dict)
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[int] = mapped_column(Integer, default=now)
    ended_at: Mapped[int | None] = mapped_column(Integer, nullable=True)


class RequestRecord(Base):
    """One inference request through the front door: the name asked for, the version that answered.

    ``error``: a server error (5xx, an error event in the stream, a stream cut off upstream);
    ``ttft_ms``: to the first generated text (streams only); ``latency_ms``: to the last byte.
    ``rollout_id``: the rollout that chose the version (None: no rollout was active).
    """

    __tablename__ = "request_records"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alias: Mapped[str] = mapped_column(String(256), index=True)
    version: Mapped[str] = mapped_column(String(256))
    rollout_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    status: Mapped[int] = mapped_column(Integer)
    error: Mapped[bool] = mapped_column(Boolean, default=False)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_ms: Mapped[float] = mapped_column(Float)
    output_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now, index=True)


class CaptureSetting(Base):
    """Whether the front door captures an alias's chat traffic (opt-in; no row: off)."""

    __tablename__ = "capture_settings"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alias: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    changed_at: Mapped[int] = mapped_column(Integer, default=now)


class CapturedResponse(Base):
    """A captured chat completion, redacted: the request's ``messages`` and the answer's text.

    ``response_id``: the ``chatcmpl-...`` id the client saw (what feedback names).
    """

    __tablename__ = "captured_responses"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    response_id: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    alias: Mapped[str] = mapped_column(String(256), index=True)
    version: Mapped[str] = mapped_column(String(256))
    user: Mapped[str | None] = mapped_column(String(256), nullable=True)
    messages: Mapped[list] = mapped_column(JSON)
    answer: Mapped[str] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now, index=True)


class Feedback(Base):
    """A rating (-1, 0, 1) and/or a corrected answer (redacted) for a captured response."""

    __tablename__ = "feedback"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    response_id: Mapped[str] = mapped_column(ForeignKey("captured_responses.response_id"), index=True)
    rating: Mapped[int | None] = mapped_column(Integer, nullable=True)
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)
    actor: Mapped[str | None] = mapped_column(String(128), nullable=True)  # the key's name
    created_at: Mapped[int] = mapped_column(Integer, default=now)


class MonitorPoint(Base):
    """One scheduled canary evaluation of a live alias's version (``tuneship monitor``).

    ``model``: the name asked (the alias, or the version itself during a rollout); ``score``: the
    mean of the primary metric (``metric``) over ``items``, ``ci_low``/``ci_high`` its 95% bootstrap
    interval; latency: per answer, end to end, in ms; ``errors``: items not answered, and ``error``
    why (then no score).
    """

    __tablename__ = "monitor_points"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alias: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(160))
    model: Mapped[str] = mapped_column(String(160))
    metric: Mapped[str | None] = mapped_column(String(64), nullable=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    ci_low: Mapped[float | None] = mapped_column(Float, nullable=True)
    ci_high: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_p50_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_p95_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    items: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now, index=True)


class MonitorAlert(Base):
    """An alert of a canary evaluation: ``kind`` score | latency | error, the one-line ``reason``,
    the measured ``value`` against its ``threshold``; ``webhook``: sent | failed | None (no URL)."""

    __tablename__ = "monitor_alerts"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    point_id: Mapped[int] = mapped_column(ForeignKey("monitor_points.seq"), index=True)
    alias: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(160))
    kind: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    webhook: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now, index=True)


def _sqlite_pragmas(connection: Any, record: Any) -> None:
    """Readers do not wait for writers (WAL); a writer waits up to 30 s for another."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def connect(url: str) -> Engine:
    """An engine for ``url``, with the records migrated to the newest revision."""
    sqlite = url.startswith("sqlite")
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30} if sqlite else {},
        pool_pre_ping=not sqlite,
    )
    if sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    migrate(engine)
    return engine


def migrate(engine: Engine) -> None:
    """Run Alembic's migrations up to ``head`` on ``engine`` (on start; idempotent)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":  # replicas starting together migrate one at a time
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def sessions(engine: Engine) -> sessionmaker:
    """A session factory whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)
