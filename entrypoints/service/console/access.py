"""Who may see a console page or send a form: a login, the role the page needs, a CSRF token."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from tuneship.entrypoints.service.console.render import page
from tuneship.entrypoints.service.console.session import COOKIE, Sessions, Viewer

if TYPE_CHECKING:
    from tuneship.entrypoints.service.service import Service

CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"


class Access:
    """The console's gate: ``page`` for pages, ``form`` for POSTs (each a Viewer, or the answer to send)."""

    def __init__(self, service: Service) -> None:
        self.sessions = Sessions(service.paths.root, service.sessions)

    def viewer(self, request: Request) -> Viewer | None:
        """The logged-in viewer of ``request`` (None: not logged in)."""
        return self.sessions.viewer(request.cookies.get(COOKIE))

    def page(self, request: Request, admin: bool = False) -> Viewer | Response:
        """The viewer, or a redirect to the login page, or a 403 page for a user key on an admin page."""
        viewer = self.viewer(request)
        if viewer is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/ui/login?next={quote(target)}", status_code=303)
        if admin and not viewer.admin:
            return page(
                "message.html.j2", 403, viewer=viewer, title="Not for this key",
                message="This page is for admin keys: a user key may call models (Playground, Models).",
            )  # fmt: skip
        return viewer

    def form(self, request: Request, token: str | None, admin: bool = False) -> Viewer | Response:
        """Like :meth:`page` for a POST, which also needs the session's CSRF token (else 403)."""
        viewer = self.viewer(request)
        if viewer is None:
            return page("message.html.j2", 401, title="Not logged in",
                        message="Your session has ended: log in again.")  # fmt: skip
        if not Sessions.matches(viewer.csrf, token or request.headers.get(CSRF_HEADER)):
            return page(
                "message.html.j2", 403, viewer=viewer, title="Form refused",
                message="This form did not carry this session's CSRF token: reload the page, send it again.",
            )  # fmt: skip
        return self.page(request, admin)
