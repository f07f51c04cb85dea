"""Login and logout, the playground (answers streamed side by side) and the models list."""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response

from tuneship.entrypoints.service.console.access import CSRF_FIELD, Access
from tuneship.entrypoints.service.console.render import STATIC, page
from tuneship.entrypoints.service.console.session import COOKIE, LIFETIME, LOGIN_COOKIE, PATH, Viewer
from tuneship.entrypoints.service.schemas import APIError

if TYPE_CHECKING:
    from tuneship.entrypoints.service.service import Service

PANELS = 4  # the base and up to three other models side by side
# What the playground may set of a chat request (everything else is the console's own choice).
SAMPLING = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0), "max_tokens": (1, 4096), "seed": (0, 2**31 - 1)}
STATIC_FILES = {"console.css": "text/css", "playground.js": "text/javascript", "live.js": "text/javascript"}


def _cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path=PATH, httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
    )  # fmt: skip


def _next(target: str | None) -> str:
    """Where to go after login: a console path only (never another site)."""
    if target and target.startswith("/ui/") and not target.startswith("/ui//") and "\\" not in target:
        return target
    return "/ui/playground"


def add_routes(router: APIRouter, service: Service, access: Access) -> None:
    """Login, logout, playground, chat stream, models and static files."""

    def login_page(
        request: Request, status: int = 200, error: str | None = None, target: str | None = None
    ) -> Response:
        nonce = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(16)
        response = page(
            "login.html.j2", status, title="Log in", error=error,
            csrf=access.sessions.login_token(nonce), next=_next(target or request.query_params.get("next")),
        )  # fmt: skip
        _cookie(response, request, LOGIN_COOKIE, nonce, 3600)
        return response

    @router.get("")
    @router.get("/")
    def home(request: Request) -> Response:
        return RedirectResponse("/ui/playground", status_code=303)

    @router.get("/login")
    def login_form(request: Request) -> Response:
        """The login form (an API key; the pre-login cookie binds the form's CSRF token)."""
        return login_page(request)

    @router.post("/login")
    async def login(request: Request) -> Response:
        """Check the key and the form's token; on success a session cookie and the page asked for."""
        form = await request.form()
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not nonce or not access.sessions.matches(access.sessions.login_token(nonce), form.get(CSRF_FIELD)):
            return login_page(request, 403, "The form expired: log in again.")
        key = str(form.get("key", "")).strip()
        role = await run_in_threadpool(service.keys.role, key) if key else None
        if role is None:
            return login_page(
                request, 401, "Incorrect API key: use a key from `tuneship service keys create`."
            )
        response = RedirectResponse(_next(str(form.get("next", ""))), status_code=303)
        _cookie(response, request, COOKIE, access.sessions.issue(key), LIFETIME)
        response.delete_cookie(LOGIN_COOKIE, path=PATH)
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        """End the session (a POST with the CSRF token, so another site cannot log you out)."""
        form = await request.form()
        viewer = await run_in_threadpool(access.form, request, form.get(CSRF_FIELD))
        if not isinstance(viewer, Viewer):
            return viewer
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(COOKIE, path=PATH)
        return response

    @router.get("/playground")
    async def playground(request: Request) -> Response:
        """Up to four models side by side: the base first, then any others the service serves."""
        viewer = await run_in_threadpool(access.page, request)
        if not isinstance(viewer, Viewer):
            return viewer
        models, error = await _models(request)
        names = [m["id"] for m in models] or [service.base_name]
        return page(
            "playground.html.j2", viewer=viewer, title="Playground", models=names,
            base=service.base_name, panels=PANELS, error=error,
            chosen=request.query_params.getlist("model"),
        )  # fmt: skip

    @router.get("/models")
    async def models(request: Request) -> Response:
        """The models this service answers for (as ``/v1/models`` lists them), read-only."""
        viewer = await run_in_threadpool(access.page, request)
        if not isinstance(viewer, Viewer):
            return viewer
        listed, error = await _models(request)
        return page("models.html.j2", viewer=viewer, title="Models", models=listed, error=error)

    @router.post("/api/chat")
    async def chat(request: Request) -> Response:
        """The playground's chat: the session's viewer, the CSRF header, then the front door (streamed).

        The browser never holds an API key: it sends the session cookie, and the answer streams
        from the same front door ``/v1/chat/completions`` uses. Errors are in OpenAI's shape.
        """
        viewer = await run_in_threadpool(access.form, request, None)
        if not isinstance(viewer, Viewer):
            error = APIError(viewer.status_code, "log in again (session or CSRF token missing)")
            return JSONResponse(error.body(), status_code=error.status)
        try:
            body = _chat_body(json.loads(await request.body()))
        except (ValueError, TypeError, KeyError) as e:
            return JSONResponse(APIError(400, f"bad chat request: {e}").body(), status_code=400)
        forwarded = _with_body(request, json.dumps(body).encode())
        try:
            return await request.app.state.front.forward(forwarded, "/v1/chat/completions")
        except APIError as e:
            return JSONResponse(e.body(), status_code=e.status)

    @router.get("/static/{name}")
    def static(name: str) -> Response:
        """The console's CSS and scripts (a fixed list)."""
        if name not in STATIC_FILES:
            return Response("not found", status_code=404)
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name])


async def _models(request: Request) -> tuple[list[dict[str, Any]], str | None]:
    try:
        return (await request.app.state.front.models())["data"], None
    except APIError as e:
        return [], f"The model server is not answering yet ({e.message}); reload in a moment."


def _chat_body(given: dict[str, Any]) -> dict[str, Any]:
    """A streamed chat request from the playground's fields, each checked (ValueError with the reason)."""
    model = given["model"]
    messages = given["messages"]
    if not isinstance(model, str) or not model:
        raise ValueError("model: a model name")
    if not isinstance(messages, list) or not messages or len(messages) > 100:
        raise ValueError("messages: 1 to 100 messages")
    clean = []
    for m in messages:
        if m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            raise ValueError("messages: each needs a role (system, user, assistant) and text content")
        clean.append({"role": m["role"], "content": m["content"]})
    body: dict[str, Any] = {"model": model, "messages": clean, "stream": True,
                            "stream_options": {"include_usage": True}}  # fmt: skip
    for name, (low, high) in SAMPLING.items():
        value = given.get(name)
        if value is None or value == "":
            continue
        value = int(value) if isinstance(low, int) else float(value)
        if not low <= value <= high:
            raise ValueError(f"{name}: between {low} and {high}")
        body[name] = value
    return body


def _with_body(request: Request, body: bytes) -> Request:
    """``request`` with another JSON body (what the front door forwards)."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = dict(request.scope)
    scope["headers"] = [(b"content-type", b"application/json"), (b"accept", b"text/event-stream")]
    return Request(scope, receive)
