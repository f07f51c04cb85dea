"""Counting the front door's inference requests: Prometheus metrics, and a record per request.

Each chat or completion request is measured as its answer streams through (:class:`Meter`):
status, server error, time to the first generated text (TTFT, streams), time to the last byte,
output tokens. :class:`Monitor` turns a finished measurement into Prometheus series labelled by
``alias`` (the name the client asked for) and ``version`` (the name that answered), served at
``/metrics`` with the managed vLLM's own metrics after them, and into a ``request_records`` row
for rollout statistics. Rows are queued without blocking and written in batches by the monitor's
own thread, so neither the event loop nor a stream ever waits for the database.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from sqlalchemy import insert
from sqlalchemy.orm import sessionmaker

from tuneship.entrypoints.service.batches import BatchWriter
from tuneship.entrypoints.service.db import RequestRecord, now
from tuneship.entrypoints.service.sse import AnswerReader, loads

log = logging.getLogger(__name__)
# vLLM's own buckets for the same quantities (vllm/v1/metrics/loggers.py), so the front door's
# histograms and the engine's line up on one dashboard.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                   60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
BATCH = 500  # rows per insert at most


@dataclass
class Meter(AnswerReader):
    """One request's measurement, fed with the answer's bytes as they pass."""

    alias: str
    version: str
    rollout_id: int | None = None
    streamed: bool = False
    status: int = 0
    error: bool = False
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    ended: float | None = None
    tokens: int = 0  # text-carrying chunks seen (vLLM streams one per generated token)
    usage_tokens: int | None = None  # completion_tokens, when the server reported usage
    _pending: bytes = b""

    def _event(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        if "error" in event:
            self.error = True
        if isinstance(event.get("usage"), dict):
            self.usage_tokens = event["usage"].get("completion_tokens")
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            if choice.get("text") or delta.get("content") or delta.get("tool_calls"):
                self.tokens += 1
                if self.first_token is None:
                    self.first_token = time.perf_counter()

    def finish(self, failed: bool = False) -> None:
        """The answer ended (``failed``: cut off by the server's side)."""
        self.ended = time.perf_counter()
        self.error = self.error or failed or self.status >= 500
        if not self.streamed and self._pending:
            body = loads(self._pending)
            usage = body.get("usage") if isinstance(body, dict) else None
            if isinstance(usage, dict):
                self.usage_tokens = usage.get("completion_tokens")

    @property
    def output_tokens(self) -> int | None:
        if self.usage_tokens is not None:
            return self.usage_tokens
        return self.tokens if self.streamed else None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.started

    @property
    def latency(self) -> float:
        return (self.ended or time.perf_counter()) - self.started


class Monitor:
    """Prometheus series of the front door, and the thread that writes request records (owned)."""

    def __init__(self, sessions: sessionmaker) -> None:
        self.sessions = sessions
        self.registry = CollectorRegistry()  # the service's own: no process-wide state
        labels, registry = ("alias", "version"), self.registry
        self.requests = Counter(
            "tuneship_requests", "Inference requests answered, by HTTP status", (*labels, "status"),
            registry=registry,
        )  # fmt: skip
        self.errors = Counter(
            "tuneship_request_errors",
            "Requests that failed on the server's side (5xx, an error event, a stream cut off)",
            labels, registry=registry,
        )  # fmt: skip
        self.ttft = Histogram(
            "tuneship_time_to_first_token_seconds", "Time to the first generated text of a streamed answer",
            labels, buckets=TTFT_BUCKETS, registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "tuneship_request_duration_seconds", "Time from the request to the answer's last byte",
            labels, buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.tokens = Counter(
            "tuneship_output_tokens", "Generated tokens (the server's usage, else streamed text chunks)",
            labels, registry=registry,
        )  # fmt: skip
        self.rows = BatchWriter("tuneship-request-records", self._write, BATCH)

    def observe(self, meter: Meter) -> None:
        """Count a finished request (cheap, never blocks: the row is written by the thread)."""
        labels = (meter.alias, meter.version)
        self.requests.labels(*labels, str(meter.status)).inc()
        if meter.error:
            self.errors.labels(*labels).inc()
        if meter.ttft is not None:
            self.ttft.labels(*labels).observe(meter.ttft)
        self.latency.labels(*labels).observe(meter.latency)
        if meter.output_tokens:
            self.tokens.labels(*labels).inc(meter.output_tokens)
        self.rows.put(
            {
                "alias": meter.alias, "version": meter.version, "rollout_id": meter.rollout_id,
                "status": meter.status, "error": meter.error, "latency_ms": meter.latency * 1000,
                "ttft_ms": None if meter.ttft is None else meter.ttft * 1000,
                "output_tokens": meter.output_tokens, "created_at": now(),
            }
        )  # fmt: skip

    def exposition(self) -> bytes:
        """The front door's series in Prometheus' text format."""
        return generate_latest(self.registry)

    def start(self) -> None:
        self.rows.start()

    def stop(self) -> None:
        """Write what is queued, then end the thread."""
        self.rows.stop()

    def _write(self, rows: list[dict]) -> None:
        try:
            with self.sessions.begin() as session:
                session.execute(insert(RequestRecord), rows)
        except Exception as e:  # noqa: BLE001 (statistics lost, traffic unaffected)
            log.warning("%d request records not written: %s", len(rows), e)
