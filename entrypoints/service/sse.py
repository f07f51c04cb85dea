"""Reading an answer as it passes through the front door, without holding it back.

A streamed answer is server-sent events (``data: {...}`` lines); each complete event is handed
to :meth:`AnswerReader._event` as soon as its line is complete, even when the network split it.
A non-streamed answer is one JSON body, kept (up to ``body_limit`` bytes) to be read at the end.
"""

from __future__ import annotations

import json
from typing import Any


class AnswerReader:
    """Mixin of the front door's per-request readers (they set ``streamed`` and ``_pending``)."""

    streamed: bool
    _pending: bytes
    body_limit = 1 << 20  # bytes of a non-streamed answer kept

    def feed(self, chunk: bytes) -> None:
        """Look at the next bytes of the answer (whole server-sent events are parsed)."""
        self._pending += chunk
        if not self.streamed:
            if len(self._pending) > self.body_limit:
                self._overflow()
            return
        cut = self._pending.rfind(b"\n") + 1
        if cut:
            lines, self._pending = self._pending[:cut], self._pending[cut:]
            for line in lines.splitlines():
                if line.startswith(b"data: {"):
                    self._event(loads(line[6:]))

    def _overflow(self) -> None:
        """A non-streamed body past ``body_limit``: keep its start (it will not parse)."""
        self._pending = self._pending[: self.body_limit]

    def _event(self, event: Any) -> None:
        """One server-sent event's JSON (None when it did not parse)."""
        raise NotImplementedError


def loads(data: bytes) -> Any:
    """JSON of ``data``, or None when it is not JSON."""
    try:
        return json.loads(data)
    except ValueError:
        return None
