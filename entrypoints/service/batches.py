"""Rows the front door produces per request, written to the database by one background thread.

Putting a row never blocks a request; the thread waits for the first row, gathers more for up to
``flush_every`` seconds (at most ``batch`` rows) and hands them to ``write`` in one call. A failing
``write`` is its owner's to log: traffic is never affected by it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

FLUSH_EVERY = 0.5  # seconds a row waits at most before it is written


class BatchWriter:
    """A queue of rows and the thread that writes them in batches (owned: :meth:`start`, :meth:`stop`)."""

    def __init__(
        self, name: str, write: Callable[[list[dict]], None], batch: int, flush_every: float = FLUSH_EVERY
    ) -> None:
        self.write = write
        self.batch = batch
        self.flush_every = flush_every
        self._queue: queue.SimpleQueue[dict | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def put(self, row: dict) -> None:
        """Queue a row (cheap, never blocks)."""
        self._queue.put(row)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then end the thread."""
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _next(self) -> tuple[list[dict], bool]:
        """The next rows (waiting for the first), and whether stop was asked."""
        first = self._queue.get()
        if first is None:
            return [], True
        rows, deadline = [first], time.monotonic() + self.flush_every
        while len(rows) < self.batch:
            try:
                row = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if row is None:
                return rows, True
            rows.append(row)
        return rows, False

    def _run(self) -> None:
        stopping = False
        while not stopping:
            rows, stopping = self._next()
            if rows:
                self.write(rows)
