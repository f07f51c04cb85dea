"""The service's records in SQL (SQLAlchemy 2), migrated by Alembic when the service opens them.

SQLite (one file under the service's home) by default; any SQLAlchemy URL otherwise (PostgreSQL
for several replicas). Every table change is an Alembic revision in ``migrations/versions``; a
test checks that the revisions and these models agree.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String, Text, create_engine, event, text
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
