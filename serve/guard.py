"""Safe hot loading inside vLLM's API server: an ASGI middleware and a LoRA resolver.

vLLM's runtime loading (``VLLM_ALLOW_RUNTIME_LORA_UPDATING``) lets a caller load an
adapter from any path on the host, and its filesystem resolver joins the requested
model name onto a directory unchecked. tuneship turns those off and puts these in:

- :class:`RegistryGuard` (``--middleware tuneship.serve.guard.RegistryGuard``) sits
  in front of ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``: it demands
  the API key, accepts only adapters inside the registry root (no ``..``, no symlink
  out), runs the adapter check against the served base (its hash, and its modules' names
  and shapes), the server's ``--max-lora-rank``, the served model's name and the chat
  template the server applies (vLLM applies one per server), and refuses with the reason
  in an OpenAI-shaped error. The status comes from the error's type, never its text:
  400 bad content or request, 401 no or wrong key, 403 hot loading off, 404 unknown name.
- :func:`register_resolver` (entry point ``vllm.general_plugins: tuneship_registry``)
  loads an adapter on the first request that names it, under the same rules.

Both read their settings from the environment that ``tuneship serve`` sets.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneship.adapters import adapter_hash, check_adapter
from tuneship.errors import (
    AdapterNotFoundError,
    AdapterRefusedError,
    NotAllowedError,
    TuneshipError,
)
from tuneship.serve.registry import confined, confined_path

log = logging.getLogger(__name__)

REGISTRY_ENV = "TUNESHIP_REGISTRY_ROOT"
BASE_SHA_ENV = "TUNESHIP_BASE_SHA256"
BASE_PATH_ENV = "TUNESHIP_BASE_PATH"  # the base's directory as the engine sees it (names and shapes)
SERVED_NAME_ENV = "TUNESHIP_SERVED_NAME"  # the base's served name: no adapter may take it
MAX_RANK_ENV = "TUNESHIP_MAX_LORA_RANK"
TEMPLATE_SHA_ENV = "TUNESHIP_CHAT_TEMPLATE_SHA256"  # of the chat template the server applies
LIVE_ENV = "TUNESHIP_LIVE_ADAPTERS"  # JSON {name: content sha256} of the adapters served from the start
LOAD_PATH = "/v1/load_lora_adapter"
UNLOAD_PATH = "/v1/unload_lora_adapter"
LIVE_PATH = "/v1/tuneship/adapters"  # GET: {name: sha256} of the content each live adapter was loaded with

# What each live adapter was loaded with: the files on disk may have changed since.
LIVE: dict[str, str] = {}


@dataclass
class GuardSettings:
    registry: Path | None
    base_sha256: str | None
    max_rank: int
    api_key: str | None
    chat_template_sha256: str | None = None  # None: not known, not checked
    base_path: Path | None = None  # None: names and shapes not checked against the base
    served_name: str | None = None

    @classmethod
    def from_env(cls) -> GuardSettings:
        root = os.environ.get(REGISTRY_ENV)
        return cls(
            registry=Path(root) if root else None,
            base_sha256=os.environ.get(BASE_SHA_ENV) or None,
            max_rank=int(os.environ.get(MAX_RANK_ENV, "0") or 0),
            api_key=os.environ.get("VLLM_API_KEY") or None,
            chat_template_sha256=os.environ.get(TEMPLATE_SHA_ENV) or None,
            base_path=Path(os.environ[BASE_PATH_ENV]) if os.environ.get(BASE_PATH_ENV) else None,
            served_name=os.environ.get(SERVED_NAME_ENV) or None,
        )

    def adapter_path(self, path: str | None = None, name: str | None = None) -> Path:
        """The registry entry to load, after every check (the one every command uses).

        Raises NotAllowedError when hot loading is off, AdapterNotFoundError for a name not in the
        registry, AdapterRefusedError (or ArtifactError for a bad name or path) with every reason.
        """
        if self.registry is None:
            raise NotAllowedError("hot loading is off: the server was started without --registry")
        if name and name == self.served_name:
            raise AdapterRefusedError(
                f"{name!r} is the name of the model this server serves; an adapter needs a name of its own"
            )
        adapter = confined_path(self.registry, path) if path else confined(self.registry, name or "")
        report = check_adapter(
            adapter,
            base_sha256=self.base_sha256,
            chat_template_sha256=self.chat_template_sha256,
            base=self.base_path,
        )
        problems = list(report.problems)
        if report.fixable:
            problems += [f"{fix} (it was not added with tuneship adapters add)" for fix in report.fixes]
        if report.rank and self.max_rank and report.rank > self.max_rank:
            problems.append(
                f"rank {report.rank} is above this server's --max-lora-rank {self.max_rank} "
                "(restart the server with a larger --max-lora-rank)"
            )
        if problems:
            raise AdapterRefusedError(f"adapter {adapter.name} refused: " + "; ".join(problems))
        return adapter

    def authorized(self, authorization: str | None) -> bool:
        if not self.api_key:
            return False  # no key, no hot loading
        scheme, _, token = (authorization or "").partition(" ")
        expected = hashlib.sha256(self.api_key.encode()).digest()
        given = hashlib.sha256(token.encode()).digest()
        return scheme.lower() == "bearer" and secrets.compare_digest(expected, given)


class RegistryGuard:
    """ASGI middleware guarding vLLM's adapter load/unload endpoints."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.settings = GuardSettings.from_env()
        LIVE.update(json.loads(os.environ.get(LIVE_ENV) or "{}"))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
        if scope["type"] != "http" or path not in (LOAD_PATH, UNLOAD_PATH, LIVE_PATH):
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        if not self.settings.authorized(headers.get("authorization")):
            await _reply(send, 401, "hot loading needs the server's API key (Authorization: Bearer KEY)")
            return
        if path != LIVE_PATH and self.settings.registry is None:
            await _reply(send, 403, "hot loading is off: the server was started without --registry")
            return
        if path == LIVE_PATH:
            await _send_json(send, 200, dict(LIVE))
            return
        body = await _read_body(receive)
        request: dict = {}
        digest = None
        if path == LOAD_PATH:
            try:
                request = json.loads(body or b"{}")
                name = request.get("lora_name")
                adapter = self.settings.adapter_path(path=request.get("lora_path"), name=name)
                if name != adapter.name:
                    raise AdapterRefusedError(f"lora_name must be the registry name {adapter.name!r}")
            except (ValueError, AttributeError) as e:
                await _reply(send, 400, f"bad load request: {e}")
                return
            except TuneshipError as e:
                await _reply(send, http_status(e), str(e))
                return
            body = json.dumps({**request, "lora_path": str(adapter)}).encode()
            digest = adapter_hash(adapter)
        else:
            try:
                request = json.loads(body or b"{}")
            except ValueError:
                request = {}
        status = await _forward(self.app, scope, body, send)
        name = request.get("lora_name") if isinstance(request, dict) else None
        if status == 200 and name:
            if digest:
                LIVE[name] = digest
            else:
                LIVE.pop(name, None)


def http_status(error: TuneshipError) -> int:
    """The HTTP status of a refusal, from the error's type (never its text)."""
    if isinstance(error, AdapterNotFoundError):
        return 404
    if isinstance(error, NotAllowedError):
        return 403
    return 400


async def _forward(app: Any, scope: dict, body: bytes, send: Any) -> int:
    """Pass the request on with ``body``; returns the status the app answered with."""
    status = 0

    async def watch(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    await app(scope, _replay(body), watch)
    return status


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes) -> Any:
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
}


async def _reply(send: Any, status: int, message: str) -> None:
    """An OpenAI-shaped error, as vLLM's own: ``{"error": {"message", "type", "param", "code"}}``."""
    error = {
        "message": message,
        "type": ERROR_TYPES.get(status, "AdapterRefused"),
        "param": None,
        "code": status,
    }
    await _send_json(send, status, {"error": error})


async def _send_json(send: Any, status: int, data: Any) -> None:
    payload = json.dumps(data).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def register_resolver() -> None:
    """vLLM general plugin: load a registry adapter on the first request naming it."""
    settings = GuardSettings.from_env()
    if settings.registry is None or not settings.api_key:
        return
    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

    class RegistryResolver(LoRAResolver):
        async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
            try:
                adapter = settings.adapter_path(name=lora_name)
            except TuneshipError as e:
                if not isinstance(e, AdapterNotFoundError):
                    log.warning("not loading %s on request: %s", lora_name, e)
                return None  # vLLM answers 404: the model does not exist
            LIVE[lora_name] = adapter_hash(adapter)
            lora_id = int(hashlib.sha256(lora_name.encode()).hexdigest()[:12], 16)
            return LoRARequest(lora_name=lora_name, lora_int_id=lora_id, lora_path=str(adapter))

    if "tuneship registry" not in LoRAResolverRegistry.get_supported_resolvers():
        LoRAResolverRegistry.register_resolver("tuneship registry", RegistryResolver())
