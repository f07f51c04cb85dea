"""The registry and its rollouts: aliases, versions with lineage, the live canary and the gate, and
the admin's promote / canary / abort / rollback -- through the same :class:`Rollouts` the CLI uses.

Every change takes two steps: a confirm page (GET) that says what will change and shows the gate's
verdict, then its form (POST, with the session's CSRF token and a required reason). The audit
records the key's name as the actor. The offline gate (``tuneship rollout start --eval --run``:
an A/B on a held-out set and a fidelity check, minutes of work on files of the server) stays
with the CLI; a canary started here stores those two checks as not measured.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from tuneship.artifacts import ADAPTER_CONFIG
from tuneship.entrypoints.service.console.access import CSRF_FIELD, Access
from tuneship.entrypoints.service.console.render import page
from tuneship.entrypoints.service.console.session import Viewer
from tuneship.entrypoints.service.db import Rollout
from tuneship.entrypoints.service.gate import Check, GateSettings, not_measured, rollout_gate
from tuneship.entrypoints.service.rollout import Rollouts
from tuneship.errors import TuneshipError
from tuneship.lineage import read_lineage
from tuneship.serve.registry import VERSION, split_version

if TYPE_CHECKING:
    from tuneship.entrypoints.service.service import Service

ACTIONS = {  # action -> (confirm button, what it is)
    "promote": ("Promote", "point the alias at this version"),
    "rollback": ("Roll back", "point the alias back at the version before"),
    "canary": ("Start canary", "send a share of the alias's traffic to a candidate"),
    "promote-candidate": ("Promote candidate", "end the canary: the alias moves to the candidate"),
    "abort": ("Abort canary", "end the canary: all traffic back to the current version"),
}
HISTORY_SHOWN = 10  # an alias's newest audit rows on the page
OFFLINE_CLI = "not run from the console: tuneship rollout start --eval HELD_OUT --run RUN"


def lineage_facts(path: Path) -> dict[str, Any]:
    """What a version's lineage says: base, data hash, template hash, method, metrics (when recorded)."""
    try:
        lineage = read_lineage(path)
    except TuneshipError as e:
        return {"problem": str(e)}
    if lineage is None:
        return {"problem": "no lineage record (tuneship.json)"}
    metrics = (lineage.model_extra or {}).get("metrics")
    return {
        "base": lineage.base_model.name if lineage.base_model else None,
        "base_sha256": lineage.base_model.weights_sha256 if lineage.base_model else None,
        "data_sha256": lineage.data.sha256 if lineage.data else None,
        "examples": lineage.data.examples if lineage.data else None,
        "template_sha256": lineage.chat_template_sha256,
        "method": lineage.method,
        "metrics": metrics if isinstance(metrics, dict) else None,
        "problem": None,
    }


def versions_by_alias(root: Path) -> dict[str, list[dict[str, Any]]]:
    """Each alias's versions, oldest first, with their lineage (read, not hashed: cheap per page)."""
    found: dict[str, list[dict[str, Any]]] = {}
    if not root.is_dir():
        return found
    for path in root.iterdir():
        match = VERSION.match(path.name)
        if match and (path / ADAPTER_CONFIG).is_file():
            found.setdefault(match["alias"], []).append(
                {"name": path.name, "number": int(match["number"]), **lineage_facts(path)}
            )
    return {alias: sorted(rows, key=lambda r: r["number"]) for alias, rows in found.items()}


def rollout_view(rollouts: Rollouts, alias: str) -> dict[str, Any] | None:
    """The alias's active rollout (else its newest), its per-version live stats and the gate's verdict."""
    found = rollouts.active(alias)
    if found is None:
        try:
            found = rollouts.latest(alias)
        except TuneshipError:
            return None
    stats = rollouts.stats(found)
    checks, passed = rollout_gate(found, stats)
    return {"rollout": found, "stats": list(stats.values()), "checks": checks, "passed": passed}


def aliases_view(rollouts: Rollouts) -> list[dict[str, Any]]:
    """Every alias: its current version, its versions with lineage, its rollout, its newest changes."""
    versions = versions_by_alias(rollouts.registry.root)
    return [
        {
            "alias": alias,
            "current": current,
            "versions": versions.get(alias, []),
            "rollout": rollout_view(rollouts, alias),
            "history": rollouts.history(alias, HISTORY_SHOWN),
        }  # fmt: skip
        for alias, current in sorted(rollouts.registry.aliases().items())
    ]


@dataclass
class Plan:
    """A change as the confirm page shows it and its POST makes it: what moves, and the gate."""

    action: str
    alias: str
    changes: list[str]
    fields: dict[str, str]  # the form's hidden fields (what the POST acts on)
    checks: list[Check] = field(default_factory=list)
    passed: bool | None = None  # None: this change has no gate of its own
    note: str = ""
    stats: list[dict[str, Any]] = field(default_factory=list)
    force: bool = False  # the gate does not pass: the POST needs "force" ticked


def plan(rollouts: Rollouts, action: str, given: dict[str, str]) -> Plan:
    """What ``action`` would do with the form's fields ``given`` (TuneshipError: it would be refused)."""
    if action == "promote":
        return _plan_promote(rollouts, given.get("version", ""))
    alias = given.get("alias", "")
    current = rollouts.current(alias)
    active = rollouts.active(alias)
    if action == "rollback":
        if active is not None:
            raise TuneshipError(
                f"a canary of {alias} to {active.candidate} is active: promote or abort it first"
            )
        target = rollouts.previous(alias, current)
        note = f"A rollback is not gated: {target} is the version that served before {current}."
        return Plan(action, alias, [f"{alias}: {current} → {target}"], {"alias": alias}, note=note)
    if action == "canary":
        return _plan_canary(rollouts, alias, given.get("candidate", ""), given.get("percent", ""))
    if action not in ("promote-candidate", "abort"):
        raise TuneshipError(f"no such change: {action!r}")
    if active is None:
        raise TuneshipError(f"no active canary of {alias!r}")
    stats = rollouts.stats(active)
    checks, passed = rollout_gate(active, stats)
    if action == "abort":
        return Plan(action, alias, [f"{alias}: every request back to {active.current}; "
                                    f"{active.candidate} gets no more traffic"], {"alias": alias},
                    checks, passed, "Aborting is never gated.", list(stats.values()))  # fmt: skip
    return Plan(action, alias, [f"{alias}: {active.current} → {active.candidate} (the canary ends)"],
                {"alias": alias}, checks, passed, stats=list(stats.values()), force=not passed)  # fmt: skip


def _plan_promote(rollouts: Rollouts, version: str) -> Plan:
    alias, number = split_version(version)
    if number is None:
        raise TuneshipError(f"{version!r} is not a version: ALIAS@N (tickets@3)")
    current = rollouts.current(alias)
    if current == version:
        raise TuneshipError(f"{alias} already points at {version}")
    active = rollouts.active(alias)
    if active is not None:
        raise TuneshipError(f"a canary of {alias} to {active.candidate} is active: promote or abort it first")
    last = _last_canary(rollouts, alias, version)
    changes = [
        f"{alias}: {current} → {version}",
        "every request for the alias is answered by it within a second",
    ]
    if last is None:
        return Plan("promote", alias, changes, {"version": version}, note=(
            f"A direct promote is not gated, and {version} has had no canary: nothing about it was measured "
            "on live traffic. The gated path is Start canary, then Promote candidate."))  # fmt: skip
    stats = rollouts.stats(last)
    checks, passed = rollout_gate(last, stats)
    note = f"A direct promote is not gated. The gate of {version}'s last canary (rollout {last.seq}, "
    note += f"{last.state}):"
    return Plan("promote", alias, changes, {"version": version}, checks, passed, note, list(stats.values()))


def _plan_canary(rollouts: Rollouts, alias: str, candidate: str, percent_text: str) -> Plan:
    try:
        percent = float(percent_text)
    except ValueError:
        raise TuneshipError(f"percent {percent_text!r}: give a share of traffic in (0, 100]") from None
    current = rollouts.check_start(alias, candidate, percent)
    fields = {"alias": alias, "candidate": candidate, "percent": f"{percent:g}"}
    active = rollouts.active(alias)
    if active is not None:  # the same candidate: the share changes, the gate stays
        stats = rollouts.stats(active)
        checks, passed = rollout_gate(active, stats)
        return Plan("canary", alias, [f"{alias}: {candidate}'s share {active.percent:g}% → {percent:g}% "
                                      f"(users who have it keep it when it grows)"], fields, checks, passed,
                    "The gate stays as it is.", list(stats.values()))  # fmt: skip
    settings = GateSettings()
    checks = [Check(**c) for c in new_gate(settings)["offline"]]
    changes = [f"{alias}: {percent:g}% of its traffic → {candidate}, the rest stays on {current}",
               "sticky per end user (the OpenAI user field or x-tuneship-user)"]  # fmt: skip
    note = (f"The offline gate is CLI-only; its checks are stored as not measured. The live checks count "
            f"once each version has served {settings.min_requests} requests; promoting without every check "
            "passed takes a ticked 'promote anyway' and a reason.")  # fmt: skip
    return Plan("canary", alias, changes, fields, checks, False, note)


def new_gate(settings: GateSettings) -> dict[str, Any]:
    """The gate a canary started here keeps: its thresholds and the offline checks, not measured."""
    offline = [not_measured("offline A/B", OFFLINE_CLI), not_measured("fidelity", OFFLINE_CLI)]
    return {"settings": settings.model_dump(mode="json"), "offline": offline}


def _last_canary(rollouts: Rollouts, alias: str, version: str) -> Rollout | None:
    """The newest rollout of ``alias`` whose candidate was ``version`` (None: it never had one)."""
    query = select(Rollout).where(Rollout.alias == alias, Rollout.candidate == version)
    with rollouts.sessions() as session:
        return session.scalars(query.order_by(Rollout.seq.desc())).first()


def make(rollouts: Rollouts, action: str, given: dict[str, str], actor: str, reason: str) -> None:
    """Make the change the confirm page showed (the gate measured again, now); TuneshipError: refused."""
    done = plan(rollouts, action, given)
    if action == "promote":
        rollouts.promote(given["version"], actor, reason)
    elif action == "rollback":
        rollouts.rollback(done.alias, actor, reason)
    elif action == "canary":
        active = rollouts.active(done.alias)
        gate = None if active is not None else new_gate(GateSettings())
        rollouts.start(done.alias, given["candidate"], float(given["percent"]), actor, reason, gate)
    elif action == "abort":
        rollouts.finish(done.alias, False, actor, reason, {})
    else:  # promote-candidate
        if done.force and given.get("force") != "yes":
            failing = "; ".join(f"{c.name}: {c.status}" for c in done.checks if c.status != "passed")
            raise TuneshipError(f"the gate does not pass ({failing}): tick 'promote anyway' to override")
        data = {"gate": [asdict(c) for c in done.checks], "passed": done.passed, "forced": done.force}
        rollouts.finish(done.alias, True, actor, reason, data)


def add_routes(router: APIRouter, service: Service, access: Access) -> None:
    """``/ui/registry`` (any key), its confirm pages and changes (admin keys)."""
    rollouts = Rollouts(service.sessions, service.paths.registry)

    def confirm_page(viewer: Viewer, action: str, given: dict[str, str], status: int = 200,
                     error: str | None = None, reason: str = "") -> Response:  # fmt: skip
        try:
            planned = plan(rollouts, action, given)
        except TuneshipError as e:
            return page("message.html.j2", 400, viewer=viewer, title="Not possible", message=str(e))
        button, what = ACTIONS[action]
        return page("confirm.html.j2", status, viewer=viewer, title=f"{button}: {planned.alias}",
                    plan=planned, button=button, what=what, error=error, reason=reason)  # fmt: skip

    @router.get("/registry")
    def registry(request: Request) -> Response:
        """Aliases, versions with lineage, rollouts with live stats and the gate; admin: the changes."""
        viewer = access.page(request)
        if not isinstance(viewer, Viewer):
            return viewer
        try:
            aliases = aliases_view(rollouts)
        except TuneshipError as e:
            return page("message.html.j2", 500, viewer=viewer, title="Registry", message=str(e))
        changed = request.query_params.get("changed")
        done = next((a["history"][0] for a in aliases if a["alias"] == changed and a["history"]), None)
        return page("registry.html.j2", viewer=viewer, title="Registry and rollouts", aliases=aliases,
                    done=done, root=rollouts.registry.root.name)  # fmt: skip

    @router.get("/registry/confirm")
    def confirm(request: Request) -> Response:
        """What a change will do and the gate's verdict, with the form that makes it (admin)."""
        viewer = access.page(request, admin=True)
        if not isinstance(viewer, Viewer):
            return viewer
        given = dict(request.query_params)
        action = given.pop("action", "")
        if action not in ACTIONS:
            return page("message.html.j2", 404, viewer=viewer, title="No such change", message=action)
        return confirm_page(viewer, action, given)

    @router.post("/registry/{action}")
    async def change(action: str, request: Request) -> Response:
        """Make a change (admin, CSRF token, a reason); the audit names the key. Then the registry page."""
        form = {k: str(v) for k, v in (await request.form()).items()}
        viewer = await run_in_threadpool(access.form, request, form.pop(CSRF_FIELD, None), True)
        if not isinstance(viewer, Viewer):
            return viewer
        if action not in ACTIONS:
            return page("message.html.j2", 404, viewer=viewer, title="No such change", message=action)
        reason = form.pop("reason", "").strip()
        if not reason:
            return await run_in_threadpool(confirm_page, viewer, action, form, 400,
                                           "A reason is required: the audit keeps it.")  # fmt: skip
        try:
            await run_in_threadpool(make, rollouts, action, form, viewer.name or viewer.role, reason)
        except TuneshipError as e:
            return await run_in_threadpool(confirm_page, viewer, action, form, 400, str(e), reason)
        alias = form.get("alias") or split_version(form.get("version", ""))[0]
        return RedirectResponse(f"/ui/registry?changed={alias}#alias-{alias}", status_code=303)
