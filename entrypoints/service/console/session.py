"""Console sessions: an API key's login as a signed cookie, and a CSRF token for every POST.

The cookie holds no key: only the key's SHA-256 (what the database stores), a random nonce and an
expiry, signed with HMAC-SHA256 by a secret kept in the service's home directory (so replicas
that share the home accept each other's sessions, and a restart logs nobody out). Every request
looks the digest up again, so a deleted key ends its sessions at once. The cookie is ``HttpOnly``
(scripts cannot read it) and ``SameSite=Strict`` (other sites' pages cannot send it); a POST
needs the CSRF token derived from the session's nonce as well (form field ``csrf`` or header
``X-CSRF-Token``). The login form has its own token, bound to a short pre-login cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from tuneship.entrypoints.service.db import ApiKey
from tuneship.entrypoints.service.keys import digest

COOKIE = "tuneship_session"
LOGIN_COOKIE = "tuneship_login"
PATH = "/ui"
LIFETIME = 12 * 3600  # seconds a login lasts
SECRET_FILE = "console-secret"


@dataclass(frozen=True)
class Viewer:
    """Who is looking: their key's role, the CSRF token of their session, and the key's name (the
    actor the audit records for what they change)."""

    role: str
    csrf: str
    name: str = ""

    @property
    def admin(self) -> bool:
        return self.role == "admin"


class Sessions:
    """Signs and checks session cookies and CSRF tokens with the service's console secret."""

    def __init__(self, root: Path, records: sessionmaker) -> None:
        self.secret = _secret(root / SECRET_FILE)
        self.records = records

    def _sign(self, text: str) -> str:
        mac = hmac.new(self.secret, text.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def issue(self, key: str) -> str:
        """A cookie value for a login with ``key`` (already checked)."""
        payload = f"{digest(key)}.{secrets.token_urlsafe(16)}.{int(time.time()) + LIFETIME}"
        return f"{payload}.{self._sign(payload)}"

    def viewer(self, cookie: str | None) -> Viewer | None:
        """The viewer of a session cookie; None when it is missing, forged, expired or its key is gone."""
        parts = (cookie or "").split(".")
        if len(parts) != 4:
            return None
        payload = ".".join(parts[:3])
        if not hmac.compare_digest(self._sign(payload), parts[3]):
            return None
        key_digest, nonce, expires = parts[:3]
        if not expires.isdigit() or int(expires) < time.time():
            return None
        with self.records() as session:
            key = session.execute(
                select(ApiKey.role, ApiKey.name).where(ApiKey.key_sha256 == key_digest)
            ).first()
        return Viewer(key.role, self._sign("csrf:" + nonce), key.name) if key else None

    def login_token(self, nonce: str) -> str:
        """The login form's CSRF token for the pre-login cookie ``nonce``."""
        return self._sign("login:" + nonce)

    @staticmethod
    def matches(expected: str, given: str | None) -> bool:
        """Whether a submitted token is the expected one (constant time)."""
        return bool(given) and hmac.compare_digest(expected, given or "")


def _secret(path: Path) -> bytes:
    """The console's signing secret: read, or made once (0600) by the first service to start."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    value = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another replica made it first
        return path.read_bytes()
    with os.fdopen(fd, "wb") as out:
        out.write(value)
    return value
