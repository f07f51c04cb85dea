"""API keys: random bearer tokens stored as SHA-256; ``admin`` trains and manages, ``user`` calls models.

Keys are 256-bit random tokens, so a plain SHA-256 (not a slow password hash) is what they are
stored as: the database never holds a usable key.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from tuneship.entrypoints.service.db import ApiKey
from tuneship.errors import TuneshipError

Role = Literal["admin", "user"]
ROLES: tuple[Role, ...] = ("admin", "user")
PREFIX = "sk-ts-"


def digest(key: str) -> str:
    """What is stored of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(sessions: sessionmaker, name: str, role: str) -> str:
    """Store a new key for ``name`` with ``role``; returns the key itself (shown once, never stored)."""
    if role not in ROLES:
        raise TuneshipError(f"role {role!r}: use one of {', '.join(ROLES)}")
    if not name.strip():
        raise TuneshipError("a key needs a name (--name), to tell keys apart")
    key = PREFIX + secrets.token_urlsafe(32)
    with sessions.begin() as session:
        session.add(ApiKey(name=name.strip(), role=role, key_sha256=digest(key), prefix=key[:12]))
    return key


class KeyRing:
    """Looks keys up in the database; remembers known keys for ``ttl`` seconds (never unknown ones)."""

    def __init__(self, sessions: sessionmaker, ttl: float = 30.0) -> None:
        self.sessions = sessions
        self.ttl = ttl
        self._known: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._process: dict[str, str] = {}  # keys of this process only (its own canary), never stored

    def allow(self, key: str, role: Role) -> None:
        """Accept ``key`` with ``role`` in this process only (a caller inside it, such as its canary)."""
        self._process[digest(key)] = role

    def role(self, key: str) -> str | None:
        """The role of ``key``, or None when it is no key of this service."""
        hashed = digest(key)
        if hashed in self._process:
            return self._process[hashed]
        with self._lock:
            known = self._known.get(hashed)
        if known and known[1] > time.monotonic():
            return known[0]
        with self.sessions() as session:
            role = session.scalar(select(ApiKey.role).where(ApiKey.key_sha256 == hashed))
        if role is not None:
            with self._lock:
                self._known[hashed] = (role, time.monotonic() + self.ttl)
        return role
