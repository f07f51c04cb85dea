"""ASGI plumbing for tuneship's middleware: read and replay a request body, forward with extra
response headers, and answer OpenAI-shaped errors (``{"error": {"message", "type", "param", "code"}}``)."""

from __future__ import annotations

import json
from typing import Any


async def forward(
    app: Any,
    scope: dict,
    body: bytes,
    send: Any,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    receive: Any = None,
) -> int:
    """Pass the request on with ``body`` (then ``receive``'s messages: a client's disconnect), adding
    ``extra_headers`` to the response; returns the status the app answered with."""
    status = 0

    async def watch(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            if extra_headers:
                message = {**message, "headers": [*message.get("headers", []), *extra_headers]}
        await send(message)

    await app(scope, replay(body, receive), watch)
    return status


def with_length(headers: list, length: int) -> list:
    """``headers`` (ASGI pairs) with content-length set to ``length``."""
    kept = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    return [*kept, (b"content-length", str(length).encode())]


async def read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def replay(body: bytes, then: Any = None) -> Any:
    """An ASGI receive that gives ``body`` once, then waits on ``then`` (vLLM watches it for the
    client's disconnect, to abort a generation); without ``then``, a disconnect at once."""
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return await then() if then is not None else {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
}


async def reply(send: Any, status: int, message: str) -> None:
    """An OpenAI-shaped error, as vLLM's own: ``{"error": {"message", "type", "param", "code"}}``."""
    error = {
        "message": message,
        "type": ERROR_TYPES.get(status, "AdapterRefused"),
        "param": None,
        "code": status,
    }
    await send_json(send, status, {"error": error})


async def send_json(send: Any, status: int, data: Any) -> None:
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
