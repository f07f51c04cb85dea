"""The inference front door: each request goes to the server of its model, its answer streamed back as is.

:class:`Router` knows which backend serves a model and under which name: the managed vLLM serves
the base, the registry's adapters, and fine-tuned models (``ft:BASE:SUFFIX:JOBID``, registered
under their job id because registry names are plain path components). Servers given by URL
(``--backend``) join the same list: a model the managed vLLM does not own goes to the first of
them that lists it, an answering one first. Their lists are read from their ``/v1/models`` on
every listing of the front door's, and on a request for a name nobody lists (at most once a
second, so unknown names cannot flood them); one that does not answer is skipped.
:class:`FrontDoor` forwards with httpx streaming, so tokens reach the client as vLLM sends them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import StreamingResponse

from tuneship.artifacts import ADAPTER_CONFIG
from tuneship.entrypoints.service.capture import Recorder, captured, start_capture
from tuneship.entrypoints.service.metrics import Meter, Monitor
from tuneship.entrypoints.service.routing import VERSION_HEADER, AliasTable, request_user
from tuneship.entrypoints.service.schemas import APIError
from tuneship.serve.registry import VERSION

log = logging.getLogger(__name__)
PASSED_HEADERS = ("content-type", "x-request-id", "cache-control")
MISS_GUARD = 1.0  # seconds between two refreshes of the backends' lists caused by unknown names
LIST_TIMEOUT = 5.0  # seconds a backend may take to list its models
MEASURED = ("/v1/chat/completions", "/v1/completions")  # the requests counted (Monitor)


@dataclass
class Backend:
    """An OpenAI-compatible server: its root URL (no ``/v1``), its key, and the models it lists."""

    url: str
    api_key: str | None = None
    managed: bool = False  # started by this service (the registry's adapters are served by it)
    models: set[str] = field(default_factory=set)  # of a server given by URL: refreshed from /v1/models
    listed: list[dict[str, Any]] = field(default_factory=list)  # its /v1/models entries, as it gave them
    up: bool = True  # it answered last time it was asked
    checked: float = float("-inf")  # time.monotonic() of the last refresh of ``models``

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


class Router:
    """Public model names to (backend, the name that backend serves it under)."""

    def __init__(
        self,
        backends: list[Backend],
        aliases: Callable[[], dict[str, str]],
        registry: Path,
        base_name: str,
    ) -> None:
        self.backends = backends
        self._load_aliases = aliases
        self.registry = registry
        self.base_name = base_name
        self.aliases: dict[str, str] = {}

    def refresh(self) -> None:
        """Read the fine-tuned models' names again (after a job succeeds)."""
        self.aliases = self._load_aliases()

    def route(self, model: str | None) -> tuple[Backend, str | None]:
        """The backend for ``model`` and the name it serves it under (unknown names go to the first)."""
        upstream = self.aliases.get(model or "")
        if upstream is None and model and model.startswith("ft:"):
            self.refresh()  # finished by another replica, or since the last refresh
            upstream = self.aliases.get(model)
        remote = self.serving(model) if upstream is None and model != self.base_name else []
        if remote:
            return remote[0], model
        return self.backends[0], upstream or model

    @property
    def remote(self) -> list[Backend]:
        """The servers given by URL."""
        return [b for b in self.backends if not b.managed]

    def serving(self, model: str | None) -> list[Backend]:
        """The servers given by URL that list ``model``, answering ones first."""
        return sorted((b for b in self.remote if model in b.models), key=lambda b: not b.up)

    def known(self, model: str) -> bool:
        """Whether some backend serves ``model`` as far as this router knows (without asking them)."""
        if model == self.base_name or model in self.aliases or self.serving(model):
            return True
        plain = "/" not in model and model not in ("", ".", "..")
        return plain and (self.registry / model / ADAPTER_CONFIG).is_file()

    def public_names(self) -> dict[str, str]:
        """Upstream name -> the public name listed for it (a fine-tuned model's, not its job id)."""
        names: dict[str, str] = {}
        for public, upstream in self.aliases.items():
            if ":ckpt-step-" not in public or upstream not in names:
                names[upstream] = public
        return names

    def registry_names(self) -> list[str]:
        """The registry's adapters (each loads on its first request)."""
        if not self.registry.is_dir():
            return []
        return sorted(p.name for p in self.registry.iterdir() if (p / ADAPTER_CONFIG).is_file())


class FrontDoor:
    """Forwards inference requests to backends over one pooled httpx client (owned: :meth:`close`)."""

    def __init__(
        self,
        router: Router,
        aliases: AliasTable | None = None,
        monitor: Monitor | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        """``aliases``: route aliases (and their rollouts) to versions; ``monitor``: count requests;
        ``recorder``: capture the chat completions of the aliases that opted in."""
        self.router = router
        self.aliases = aliases
        self.monitor = monitor
        self.recorder = recorder
        # An idle pooled connection is dropped here before the server closes it: vLLM's (and
        # uvicorn's) keep-alive is 5 s, httpx's default expiry too, so a request sent on a connection
        # idle for ~5 s met the server's close and failed (503, ReadError) under the 16-client load test.
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=5.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256, keepalive_expiry=2.0),
        )
        self._refreshing = asyncio.Lock()

    async def close(self) -> None:
        await self.client.aclose()

    async def forward(self, request: Request, path: str) -> StreamingResponse:
        """Send the request to its model's backend; stream the answer back unbuffered."""
        body = await request.body()
        payload = _json(body) if request.method == "POST" else None
        model = payload.get("model") if isinstance(payload, dict) else None
        model = model if isinstance(model, str) else None
        routed, user = None, request_user(payload, request.headers)
        if self.aliases is not None:
            routed = await self.aliases.pick(model, user)
        version, rollout_id = routed or (None, None)
        chat = path == "/v1/chat/completions"
        capture = await start_capture(self.recorder, payload, model, version, user) if chat else None
        target = version or model
        if target and self.router.remote and not self.router.known(target):
            await self.refresh_backends(max_age=MISS_GUARD)  # a backend may list it since
        backend, upstream = self.router.route(target)
        rewrite = None
        if isinstance(payload, dict) and isinstance(model, str) and upstream and upstream != model:
            body = json.dumps({**payload, "model": upstream}).encode()
            if version is None:  # an alias's answer names its version; a fine-tuned model its own name
                rewrite = (upstream, model)
        version = version or (model if model and VERSION.match(model) else None)
        meter = self._meter(path, model, version, rollout_id)
        headers = {
            "content-type": request.headers.get("content-type", "application/json"),
            "accept": request.headers.get("accept", "*/*"),
            "accept-encoding": "identity",
        }
        try:
            response = await self._connect(request, path, body, headers, backend, model)
        except APIError as e:
            if meter is not None and self.monitor is not None:
                meter.status = e.status
                meter.finish()
                self.monitor.observe(meter)
            raise
        passed = {k: v for k, v in response.headers.items() if k.lower() in PASSED_HEADERS}
        if version:
            passed[VERSION_HEADER] = version
        chunks = response.aiter_raw() if rewrite is None else _renamed(response.aiter_raw(), *rewrite)
        if meter is not None and self.monitor is not None:
            meter.status = response.status_code
            meter.streamed = "text/event-stream" in response.headers.get("content-type", "")
            chunks = _measured(chunks, meter, self.monitor)
        if capture is not None and self.recorder is not None:
            capture.status = response.status_code
            capture.streamed = "text/event-stream" in response.headers.get("content-type", "")
            chunks = captured(chunks, capture, self.recorder)
        return StreamingResponse(
            chunks,
            status_code=response.status_code,
            headers=passed,
            background=BackgroundTask(response.aclose),
        )

    async def _connect(
        self, request: Request, path: str, body: bytes, headers: dict, backend: Backend, model: str | None
    ) -> httpx.Response:
        """The upstream answer's head, from ``backend`` or (servers given by URL) the first that answers."""
        candidates = [backend] if backend.managed else self.router.serving(model)
        for backend in candidates:
            upstream_request = self.client.build_request(
                request.method,
                backend.url + path,
                params=request.query_params,
                content=body,
                headers={**backend.headers(), **headers},
            )
            try:
                return await self._send(upstream_request, backend, model)
            except APIError:
                # Not connected: nothing was sent, so the next server that lists the model gets it.
                if backend.up or backend is candidates[-1]:
                    raise
        raise APIError(503, f"no server of {model!r} is answering", code="model_server_unavailable")

    def _meter(
        self, path: str, model: str | None, version: str | None, rollout_id: int | None
    ) -> Meter | None:
        """A measurement of a chat or completion request (unknown names are counted as ``other``)."""
        if self.monitor is None or path not in MEASURED:
            return None
        asked = model if model and (version or self.router.known(model)) else "other"
        return Meter(asked, version or asked, rollout_id)

    async def engine_metrics(self) -> bytes:
        """The managed vLLM's own ``/metrics`` text (a comment saying why, when it has none)."""
        backend = self.router.backends[0]
        try:
            response = await self.client.get(
                backend.url + "/metrics", headers=backend.headers(), timeout=LIST_TIMEOUT
            )
            if response.status_code == 200:
                return response.content
            why = f"HTTP {response.status_code}"
        except httpx.HTTPError as e:
            why = type(e).__name__
        return f"# the model server's own metrics are not available now ({why})\n".encode()

    async def _send(
        self, request: httpx.Request, backend: Backend | None = None, model: str | None = None
    ) -> httpx.Response:
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TransportError as e:
            if backend is None or backend.managed:
                message = f"the model server is not answering (starting, or stopped): {type(e).__name__}"
            else:
                backend.up = not isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout))
                message = f"the server of {model!r}, {backend.url}, is not answering: {type(e).__name__}"
            raise APIError(503, message, code="model_server_unavailable") from None
        if backend is not None:
            backend.up = True
        return response

    async def refresh_backends(self, max_age: float = 0.0) -> None:
        """Read the model lists of the servers given by URL, of those not read in ``max_age`` seconds."""
        async with self._refreshing:  # one refresh at a time; a waiting one finds the lists fresh
            now = time.monotonic()
            due = [b for b in self.router.remote if now - b.checked >= max_age]
            await asyncio.gather(*(self._list(b) for b in due))

    async def _list(self, backend: Backend) -> None:
        """``backend``'s models from its ``/v1/models`` (a server that does not answer keeps its last)."""
        backend.checked = time.monotonic()
        try:
            response = await self.client.get(
                backend.url + "/v1/models", headers=backend.headers(), timeout=LIST_TIMEOUT
            )
            response.raise_for_status()
            listed = [m for m in response.json()["data"] if isinstance(m.get("id"), str)]
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as e:
            if backend.up:
                log.warning("Backend %s did not list its models: %s", backend.url, e or type(e).__name__)
            backend.up = False
            return
        backend.listed, backend.models, backend.up = listed, {m["id"] for m in listed}, True

    async def models(self) -> dict[str, Any]:
        """``/v1/models``: the base, live and loadable adapters, fine-tuned models (with ``parent``),
        then the models of the answering servers given by URL (as they list them)."""
        backend = self.router.backends[0]
        request = self.client.build_request("GET", backend.url + "/v1/models", headers=backend.headers())
        response, _ = await asyncio.gather(self._send(request), self.refresh_backends())
        await response.aread()
        if response.status_code != 200:
            raise APIError(503, "the model server did not list its models", code="model_server_unavailable")
        self.router.refresh()
        public = self.router.public_names()
        listed: dict[str, dict[str, Any]] = {}
        for model in response.json().get("data", []):
            model["id"] = public.get(model["id"], model["id"])
            listed[model["id"]] = model
        loadable = [*self.router.registry_names(), *self.router.aliases]
        for name in loadable:
            name = public.get(name, name)
            if name not in listed:
                listed[name] = {
                    "id": name,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "tuneship",
                    "root": None,
                    "parent": self.router.base_name,
                }
        if self.aliases is not None:
            await self.aliases.fresh()
            for alias, info in self.aliases.listing().items():
                listed[alias] = {"id": alias, "object": "model", "created": int(time.time()),
                                 "owned_by": "tuneship", "root": None,
                                 "parent": self.router.base_name, **info}  # fmt: skip
        for remote in self.router.remote:
            for model in remote.listed if remote.up else []:
                listed.setdefault(model["id"], model)  # a name the managed vLLM owns stays its
        return {"object": "list", "data": list(listed.values())}


def _json(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None  # the backend answers it with its own error


async def _measured(chunks: AsyncIterator[bytes], meter: Meter, monitor: Monitor) -> AsyncIterator[bytes]:
    """The answer as it is, measured on the way; counted when it ends (a client gone is no error)."""
    failed = False
    try:
        async for chunk in chunks:
            meter.feed(chunk)
            yield chunk
    except Exception:
        failed = True  # the server's side broke the stream
        raise
    finally:
        meter.finish(failed)
        monitor.observe(meter)


async def _renamed(chunks: AsyncIterator[bytes], upstream: str, public: str) -> AsyncIterator[bytes]:
    """The answer with the served name replaced by the name the client asked for, line by line.

    Lines (server-sent events, or one JSON body) are complete before they are rewritten, so a
    name split across two network chunks is still found.
    """
    patterns = [
        (f'"model":{json.dumps(upstream)}'.encode(), f'"model":{json.dumps(public)}'.encode()),
        (f'"model": {json.dumps(upstream)}'.encode(), f'"model": {json.dumps(public)}'.encode()),
    ]
    pending = b""
    async for chunk in chunks:
        pending += chunk
        cut = pending.rfind(b"\n") + 1
        if cut:
            ready, pending = pending[:cut], pending[cut:]
            for old, new in patterns:
                ready = ready.replace(old, new)
            yield ready
    for old, new in patterns:
        pending = pending.replace(old, new)
    if pending:
        yield pending
