"""Aliases and safe hot loading inside vLLM's API server: an ASGI middleware and a LoRA resolver.

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
- The same middleware answers a request for an alias with the version it points at: the JSON
  ``model`` of ``POST /v1/chat/completions``, ``/v1/completions``, ``/tokenize`` and
  ``/detokenize`` is rewritten from ``tickets`` to ``tickets@2`` (``aliases.json`` is re-read when
  it changes), so vLLM serves and names the version, and the response carries the header
  ``x-tuneship-model-version: tickets@2`` (also for a request naming a version). ``GET /v1/models``
  lists each alias too, as a copy of its version's card with ``id`` the alias and
  ``tuneship_version`` the version (an alias whose version is not live is listed only when hot
  loading is on, since its first request loads it). vLLM itself never sees an alias as a name.
- :func:`register_resolver` (entry point ``vllm.general_plugins: tuneship_registry``)
  loads a version or plain entry on the first request that names it, under the same rules;
  an alias is never loaded as an adapter.

Both read their settings from the environment that ``tuneship serve`` sets.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneship.adapters import adapter_hash, check_adapter
from tuneship.artifacts import ADAPTER_CONFIG
from tuneship.errors import (
    AdapterNotFoundError,
    AdapterRefusedError,
    ArtifactError,
    NotAllowedError,
    TuneshipError,
)
from tuneship.serve.asgi import forward, read_body, reply, send_json, with_length
from tuneship.serve.registry import ALIASES, VERSION, Registry, confined, confined_path

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
MODELS_PATH = "/v1/models"
# POST endpoints whose JSON ``model`` names what answers: an alias there is rewritten to its version.
MODEL_PATHS = ("/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize")
VERSION_HEADER = b"x-tuneship-model-version"

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
        version = Registry(self.registry).aliases().get(name or "")
        if version:  # loading it under the alias's name would let two versions share one name
            raise AdapterRefusedError(
                f"{name!r} is an alias (of {version}), not an adapter: load the version {version} "
                f"(tuneship adapters load {name} does); requests for {name!r} are answered by it"
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


class AliasTable:
    """The registry's ``aliases.json``, re-read only when the file changes (one stat per request)."""

    def __init__(self, registry: Path | None) -> None:
        self.registry = registry
        self.stamp: tuple[int, int, int] | None = None
        self.table: dict[str, str] = {}

    def current(self) -> dict[str, str]:
        """Alias -> version; the last good table while the file is unreadable (it is replaced atomically)."""
        if self.registry is None:
            return {}
        try:
            stat = (self.registry / ALIASES).stat()
        except OSError:
            self.stamp, self.table = None, {}
            return self.table
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if stamp != self.stamp:
            try:
                self.table, self.stamp = Registry(self.registry).aliases(), stamp
            except ArtifactError as e:
                log.warning("keeping the previous aliases: %s", e)
        return self.table


class RegistryGuard:
    """ASGI middleware: aliases to versions on inference requests; guards adapter load/unload."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.settings = GuardSettings.from_env()
        self.aliases = AliasTable(self.settings.registry)
        LIVE.update(json.loads(os.environ.get(LIVE_ENV) or "{}"))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
        method = scope.get("method", "GET")
        if scope["type"] == "http" and self.settings.registry is not None:
            if path in MODEL_PATHS and method == "POST":
                await self._answer_by_version(scope, receive, send)
                return
            if path == MODELS_PATH and method == "GET":
                await self._list_with_aliases(scope, receive, send)
                return
        if scope["type"] != "http" or path not in (LOAD_PATH, UNLOAD_PATH, LIVE_PATH):
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        if self.settings.registry is not None and not self.settings.api_key:
            await reply(send, 403, "hot loading is off: the server was started without an API key")
            return
        if not self.settings.authorized(headers.get("authorization")):
            await reply(send, 401, "hot loading needs the server's API key (Authorization: Bearer KEY)")
            return
        if path != LIVE_PATH and self.settings.registry is None:
            await reply(send, 403, "hot loading is off: the server was started without --registry")
            return
        if path == LIVE_PATH:
            await send_json(send, 200, dict(LIVE))
            return
        await self._load_or_unload(path, scope, receive, send)

    async def _load_or_unload(self, path: str, scope: dict, receive: Any, send: Any) -> None:
        body = await read_body(receive)
        request: dict = {}
        digest = None
        if path == LOAD_PATH:
            try:
                request = json.loads(body or b"{}")
                name = request.get("lora_name")
                adapter = self.settings.adapter_path(path=request.get("lora_path"), name=name)
                if name != adapter.name:
                    raise AdapterRefusedError(f"lora_name must be the registry name {adapter.name!r}")
                digest = adapter_hash(adapter)
                if LIVE.get(name, digest) != digest:  # reloading it in place would mix the two
                    raise AdapterRefusedError(
                        f"{name} is live with other content than its registry files have now (they "
                        "were changed by hand); a version is never rewritten: add the adapter as a "
                        "new version (tuneship adapters add) and load that"
                    )
            except (ValueError, AttributeError) as e:
                await reply(send, 400, f"bad load request: {e}")
                return
            except TuneshipError as e:
                await reply(send, http_status(e), str(e))
                return
            body = json.dumps({**request, "lora_path": str(adapter)}).encode()
        else:
            try:
                request = json.loads(body or b"{}")
            except ValueError:
                request = {}
        status = await forward(self.app, scope, body, send)
        name = request.get("lora_name") if isinstance(request, dict) else None
        if status == 200 and name:
            if digest:
                LIVE[name] = digest
            else:
                LIVE.pop(name, None)

    async def _answer_by_version(self, scope: dict, receive: Any, send: Any) -> None:
        """Rewrite an alias in the body's ``model`` to its version; name the version in a header."""
        body = await read_body(receive)
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        model = request.get("model") if isinstance(request, dict) else None
        version = self.aliases.current().get(model) if isinstance(model, str) else None
        if version:
            body = json.dumps({**request, "model": version}).encode()
            scope = {**scope, "headers": with_length(scope.get("headers", []), len(body))}
        elif isinstance(model, str) and VERSION.match(model):
            version = model
        extra = [(VERSION_HEADER, version.encode())] if version else []
        await forward(self.app, scope, body, send, extra, receive)

    async def _list_with_aliases(self, scope: dict, receive: Any, send: Any) -> None:
        """vLLM's model list plus one card per alias (see the module's docstring)."""
        messages: list[dict] = []

        async def hold(message: dict) -> None:
            messages.append(message)

        await self.app(scope, receive, hold)
        start = next((m for m in messages if m["type"] == "http.response.start"), None)
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
        try:
            listing = json.loads(body) if start and start["status"] == 200 else None
            cards = listing["data"]
        except (ValueError, KeyError, TypeError):
            listing = None
        if listing is None:
            for message in messages:
                await send(message)
            return
        listing["data"] = cards + self._alias_cards({c.get("id"): c for c in cards})
        payload = json.dumps(listing).encode()
        headers = with_length(start.get("headers", []), len(payload))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    def _alias_cards(self, cards: dict[str, dict]) -> list[dict]:
        added = []
        for alias, version in sorted(self.aliases.current().items()):
            card = cards.get(version)
            if alias in cards:
                continue
            root = self.settings.registry
            if (
                card is None
                and self.settings.api_key
                and root
                and (root / version / ADAPTER_CONFIG).is_file()
            ):
                card = {  # not live yet: its first request loads it (vLLM's card for an adapter)
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "vllm",
                    "root": str(root / version),
                    "parent": self.settings.served_name,
                    "max_model_len": None,
                    "permission": [],
                }
            if card is not None:
                added.append({**card, "id": alias, "tuneship_version": version})
        return added


def http_status(error: TuneshipError) -> int:
    """The HTTP status of a refusal, from the error's type (never its text)."""
    if isinstance(error, AdapterNotFoundError):
        return 404
    if isinstance(error, NotAllowedError):
        return 403
    return 400


def register_resolver() -> None:
    """vLLM general plugin: load a registry adapter on the first request naming it."""
    settings = GuardSettings.from_env()
    if settings.registry is None or not settings.api_key:
        return
    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

    class RegistryResolver(LoRAResolver):
        async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
            try:  # an alias is refused here: it names a version, never an adapter of its own
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
