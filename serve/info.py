"""What a tuneship server tells clients about itself: is its inference deterministic?

:class:`ServerInfo` (``--middleware tuneship.serve.info.ServerInfo``, on every server
``tuneship serve`` starts) answers ``GET /v1/tuneship/server`` with a
:class:`~tuneship.determinism.ServerDeterminism` read from the engine process itself: its
device and whether ``VLLM_BATCH_INVARIANT`` is set. ``tuneship ab`` and ``verify`` report it.
When the server has an API key, the route needs it (as vLLM's own routes do).
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

from tuneship.determinism import (
    BATCH_INVARIANT_ENV,
    SERVER_PATH,
    Device,
    ServerDeterminism,
    server_determinism,
    unavailable_reason,
)
from tuneship.errors import TuneshipError

MIDDLEWARE = "tuneship.serve.info.ServerInfo"


def detect_device() -> tuple[Device, tuple[int, int] | None, str | None]:
    """The device vLLM will run on here: (kind, CUDA capability, GPU arch).

    Asked without starting CUDA in this process (the engine needs the GPU's memory): torch
    counts devices, NVML gives the compute capability.
    """
    try:
        import torch
    except ImportError:
        return "other", None, None
    if torch.cuda.is_available():
        if getattr(torch.version, "hip", None):
            return "rocm", None, getattr(torch.cuda.get_device_properties(0), "gcnArchName", None)
        return "cuda", _nvml_capability(), None
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return "xpu", None, None
    return "cpu", None, None


def _nvml_capability() -> tuple[int, int] | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        first = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
        handle = pynvml.nvmlDeviceGetHandleByIndex(int(first) if first.isdigit() else 0)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        return int(major), int(minor)
    except Exception:  # no NVML, or a device it cannot name: capability unknown
        return None


def engine_device() -> tuple[Device, tuple[int, int] | None, str | None]:
    """The device as vLLM's own platform sees it, inside the engine's API server (NVML, no CUDA)."""
    try:
        from vllm.platforms import current_platform as platform
    except ImportError:
        return detect_device()
    if platform.is_cuda():
        capability = platform.get_device_capability()
        return "cuda", (capability.major, capability.minor) if capability else None, None
    if platform.is_rocm():
        from vllm.platforms import rocm

        return "rocm", None, getattr(rocm, "_GCN_ARCH", None)
    if platform.is_xpu():
        return "xpu", None, None
    return ("cpu", None, None) if platform.is_cpu() else ("other", None, None)


def check_deterministic(requested: bool) -> ServerDeterminism:
    """What ``tuneship serve --deterministic`` will give on this machine.

    Raises:
        TuneshipError: deterministic inference was requested where vLLM has none (one line, why).
    """
    device, capability, arch = detect_device()
    reason = unavailable_reason(device, capability, arch)
    if requested and reason is not None:
        hint = "; for repeatable answers here, evaluate at --concurrency 1" if device == "cpu" else ""
        raise TuneshipError(f"--deterministic: {reason}{hint}")
    return server_determinism(requested, device, capability, arch)


class ServerInfo:
    """ASGI middleware: ``GET /v1/tuneship/server`` answers this server's determinism (JSON)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        enabled = os.environ.get(BATCH_INVARIANT_ENV, "0") not in ("", "0")
        self.report = server_determinism(enabled, *engine_device()).model_dump_json().encode()
        self.api_key = os.environ.get("VLLM_API_KEY") or None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
        if scope["type"] != "http" or path != SERVER_PATH:
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        given = headers.get("authorization", "").encode()
        if self.api_key and not secrets.compare_digest(given, f"Bearer {self.api_key}".encode()):
            error = {"message": "needs the server's API key", "type": "AuthenticationError", "code": 401}
            await _send(send, 401, json.dumps({"error": error}).encode())
            return
        await _send(send, 200, self.report)


async def _send(send: Any, status: int, payload: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


__all__ = ["MIDDLEWARE", "ServerDeterminism", "ServerInfo", "check_deterministic", "detect_device"]
