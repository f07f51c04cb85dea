"""Talk to a running server about its adapters: list, load (hot), unload.

    tuneship adapters list   --endpoint http://127.0.0.1:8000/v1 --registry registry
    tuneship adapters load   tickets --registry registry --api-key KEY   # the alias's version
    tuneship adapters unload tickets@1 --api-key KEY

Loading checks the adapter here first (for a quick, clear refusal) and the server's
guard checks it again (the check that counts).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

from tuneship.adapters import adapter_hash, check_adapter
from tuneship.artifacts import ADAPTER_CONFIG
from tuneship.errors import ServerError
from tuneship.serve.registry import Entry, Registry


@dataclass
class Live:
    name: str
    parent: str | None  # the base model an adapter belongs to (None for the base itself)
    path: str | None
    sha256: str | None  # content hash, when the path is readable from here
    version: str | None = None  # for an alias (listed by tuneship's guard): the version answering it


AdapterState = Literal["live", "not loaded", "live with other content"]


@dataclass
class RegistryRow:
    """One registry adapter and whether the server serves it, with this content."""

    entry: Entry
    state: AdapterState


@dataclass
class Status:
    """What a running server serves and what the registry holds, side by side."""

    endpoint: str
    live: list[Live]
    server_error: str | None  # why the server could not be asked (None: it answered)
    registry: str
    adapters: list[RegistryRow]


def _request(method: str, url: str, api_key: str | None, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        return httpx.request(method, url, headers=headers, timeout=120, **kwargs)
    except httpx.HTTPError as e:
        raise ServerError(f"cannot reach {url}: {e}") from None


def _error(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", response.json())
        return error.get("message", str(error)) if isinstance(error, dict) else str(error)
    except ValueError:
        return response.text[:300] or response.reason_phrase


def list_live(endpoint: str, api_key: str | None = None) -> list[Live]:
    response = _request("GET", f"{endpoint.rstrip('/')}/models", api_key)
    if response.status_code != 200:
        raise ServerError(f"{endpoint}/models answered {response.status_code}: {_error(response)}")
    # What each adapter was loaded with (tuneship's guard records it); else what is on disk now.
    loaded = _request("GET", f"{endpoint.rstrip('/')}/tuneship/adapters", api_key)
    hashes = loaded.json() if loaded.status_code == 200 else {}
    live = []
    for model in response.json().get("data", []):
        root = model.get("root")
        digest = hashes.get(model["id"])
        if digest is None and root and (Path(root) / ADAPTER_CONFIG).is_file():
            digest = adapter_hash(Path(root))
        live.append(Live(model["id"], model.get("parent"), root, digest, model.get("tuneship_version")))
    return live


def load(endpoint: str, name: str, registry: Path | str, api_key: str | None, replace: bool = False) -> Live:
    """Hot-load registry version or entry ``name`` (an alias: the version it points at).

    Live already with this content: nothing to do. Live with other content (its files were changed
    by hand): refused, since reloading a name in place lets vLLM mix the two (its prefix cache).
    ``replace`` is ignored (older callers): registry names are never reloaded with other content.
    """
    reg = Registry(registry)
    name = reg.resolve(name)
    path = reg.path(name)
    report = check_adapter(path)
    if not report.ok:
        raise ServerError(f"adapter {name} refused: " + "; ".join(report.problems or report.fixes))
    digest = adapter_hash(path)
    current = {m.name: m for m in list_live(endpoint, api_key)}
    if name in current:
        if current[name].sha256 == digest:
            return current[name]  # already live with this content: nothing to do
        raise ServerError(
            f"{name} is live with other content than the registry's (its files were changed); "
            "add the adapter as a new version (tuneship adapters add) and load that"
        )
    body = {"lora_name": name, "lora_path": str(path.resolve())}
    response = _request("POST", f"{endpoint.rstrip('/')}/load_lora_adapter", api_key, json=body)
    if response.status_code == 404 and '"detail"' in response.text:  # no such route: runtime loading off
        raise ServerError(f"{endpoint} does not allow hot loading (start it with --registry and --api-key)")
    if response.status_code != 200:
        raise ServerError(f"the server refused {name} ({response.status_code}): {_error(response)}")
    return next(m for m in list_live(endpoint, api_key) if m.name == name)


def unload(endpoint: str, name: str, api_key: str | None) -> None:
    body = {"lora_name": name}
    response = _request("POST", f"{endpoint.rstrip('/')}/unload_lora_adapter", api_key, json=body)
    if response.status_code != 200:
        raise ServerError(f"the server did not unload {name} ({response.status_code}): {_error(response)}")


def status(endpoint: str, api_key: str | None, registry: Path | str) -> Status:
    """The live models at ``endpoint`` and each registry adapter's state there.

    An unreachable server is not an error here: ``server_error`` says why, and every
    registry adapter is "not loaded".
    """
    live: dict[str, Live] = {}
    error = None
    try:
        live = {m.name: m for m in list_live(endpoint, api_key)}
    except ServerError as e:
        error = str(e)
    rows = []
    for entry in Registry(registry).entries():
        served = live.get(entry.name)
        state: AdapterState = "not loaded"
        if served is not None and served.sha256 == entry.sha256:
            state = "live"
        elif served is not None and served.sha256 is not None:
            state = "live with other content"
        rows.append(RegistryRow(entry, state))
    return Status(endpoint, list(live.values()), error, str(registry), rows)
