"""The web console at ``/ui``: a playground, the models, files and fine-tuning jobs, and job reports.

Pages are rendered on the server from Jinja2 templates (the A/B page reuses the CLI reports'
charts); a little vanilla JavaScript streams the playground's answers and refreshes live pages.
Everything goes through the service's own stores and front door, with the API's rules: a login
with an API key, and its role decides what is shown (``user``: playground, models, registry and
monitoring, read-only; ``admin``: also files and jobs, and the registry's changes).

- :mod:`.session`    -- signed session cookies and CSRF tokens
- :mod:`.access`     -- who may see a page or send a form (login, role, CSRF)
- :mod:`.render`     -- the Jinja2 environment and chart geometry
- :mod:`.pages`      -- login, logout, playground (and its chat stream), models, static files
- :mod:`.jobs`       -- uploads with their preflight, job creation, a job's live page, cancel
- :mod:`.reports`    -- the A/B and fidelity reports a job attached
- :mod:`.registry`   -- aliases, versions, lineage, rollouts, the gate; promote, canary, abort, rollback
- :mod:`.monitoring` -- the canary's score and latency series as charts, and its alerts
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter

if TYPE_CHECKING:
    from tuneship.entrypoints.service.service import Service


def console_router(service: Service) -> APIRouter:
    """The console's routes (all under ``/ui``), for ``app.include_router``."""
    from tuneship.entrypoints.service.console import jobs, monitoring, pages, registry, reports
    from tuneship.entrypoints.service.console.access import Access

    router = APIRouter(prefix="/ui", include_in_schema=False)
    access = Access(service)
    pages.add_routes(router, service, access)
    jobs.add_routes(router, service, access)
    reports.add_routes(router, service, access)
    registry.add_routes(router, service, access)
    monitoring.add_routes(router, service, access)
    return router
