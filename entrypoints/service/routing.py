"""Which version answers a request for an alias: the alias's own, or a rollout's candidate.

An alias (``tickets``) points at one version (``tickets@2``) in the registry's ``aliases.json``.
While a rollout of it is active (a row of the ``rollouts`` table), ``percent`` of its traffic goes
to the candidate: sticky per end user (the OpenAI ``user`` field, else an ``x-tuneship-user``
header), by a hash of the rollout's id and the user, so every replica sends a user to the same
version and a user who had the candidate at 10% keeps it at 50%; a request with no user is
split at random. Both are read again at most once a second (:data:`TTL`), off the event loop,
so a change made by the CLI (or another replica) reaches this one within about a second.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from tuneship.entrypoints.service.db import Rollout
from tuneship.serve.registry import Registry

log = logging.getLogger(__name__)
USER_HEADER = "x-tuneship-user"  # the end user, for clients that cannot set OpenAI's `user` field
VERSION_HEADER = "x-tuneship-model-version"  # on answers: the version that answered
TTL = 1.0  # seconds a replica may serve from its last reading of aliases and rollouts


@dataclass(frozen=True)
class Split:
    """An active rollout as the front door uses it."""

    id: int
    current: str
    candidate: str
    percent: float


def bucket(rollout_id: int, user: str) -> float:
    """The user's place in [0, 100) for a rollout: the same on every replica and at every share."""
    digest = hashlib.sha256(f"{rollout_id}/{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def choose(split: Split, user: str | None) -> str:
    """The version that answers ``user`` (None: a random draw) during ``split``."""
    place = bucket(split.id, user) if user else random.random() * 100
    return split.candidate if place < split.percent else split.current


def request_user(payload: Any, headers: Any) -> str | None:
    """The end user of a request: OpenAI's ``user`` field, else the ``x-tuneship-user`` header."""
    user = payload.get("user") if isinstance(payload, dict) else None
    if isinstance(user, str) and user:
        return user
    return headers.get(USER_HEADER) or None


class AliasTable:
    """Aliases and active rollouts, read from the registry and the database at most every ``ttl`` s."""

    def __init__(self, registry: Path, sessions: sessionmaker, ttl: float = TTL) -> None:
        self.registry = Registry(registry)
        self.sessions = sessions
        self.ttl = ttl
        self.aliases: dict[str, str] = {}
        self.splits: dict[str, Split] = {}
        self._read_at = float("-inf")
        self._reading: asyncio.Task | None = None

    def load(self) -> None:
        """Read both now (blocking: call it off the event loop). A reading that fails keeps the last."""
        try:
            aliases = self.registry.aliases()
            with self.sessions() as session:
                rows = session.scalars(select(Rollout).where(Rollout.state == "active")).all()
        except Exception as e:  # noqa: BLE001 (a bad reading never stops traffic: the last one serves)
            log.warning("Aliases and rollouts not read again (serving the last reading): %s", e)
            return
        self.aliases = aliases
        self.splits = {r.alias: Split(r.seq, r.current, r.candidate, r.percent) for r in rows}

    async def fresh(self) -> None:
        """Read again when the last reading is older than ``ttl``, one reading at a time, and wait
        for it (it takes milliseconds): no request is routed on a reading more than about ``ttl``
        old, even after an idle hour."""
        if self._reading is None or self._reading.done():
            if time.monotonic() - self._read_at < self.ttl:
                return
            self._read_at = time.monotonic()
            self._reading = asyncio.ensure_future(asyncio.to_thread(self.load))
        await asyncio.shield(self._reading)

    async def pick(self, model: str | None, user: str | None) -> tuple[str, int | None] | None:
        """``(version, rollout id or None)`` for a request naming an alias; None for any other name."""
        if not model or "@" in model:
            return None
        await self.fresh()
        split = self.splits.get(model)
        if split is not None:
            return choose(split, user), split.id
        version = self.aliases.get(model)
        return (version, None) if version else None

    def listing(self) -> dict[str, dict[str, Any]]:
        """Alias -> what ``/v1/models`` says of it: the version it points at, and an active rollout."""
        listed = {}
        for alias, version in self.aliases.items():
            entry: dict[str, Any] = {"version": version}
            split = self.splits.get(alias)
            if split is not None:
                entry["rollout"] = {"current": split.current, "candidate": split.candidate,
                                    "percent": split.percent}  # fmt: skip
            listed[alias] = entry
        return listed
