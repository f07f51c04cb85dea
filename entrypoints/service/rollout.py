"""Moving aliases, with an audit: promote, roll back, and canary rollouts with a gate.

The registry's ``aliases.json`` says which version an alias answers with; the ``rollouts`` table
says which share of its traffic a candidate gets meanwhile; every change is an ``alias_changes``
row (who, when, what, why). The front door reads both (:mod:`~.routing`), so these functions
change live traffic within about a second, without a restart and without failing a request:
an alias moves by one atomic file replace, and a version's files never change.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tuneship.entrypoints.service.db import AliasChange, RequestRecord, Rollout, now
from tuneship.errors import TuneshipError
from tuneship.serve.registry import Registry, confined, split_version

ACTIONS = ("promote", "rollback", "rollout_start", "rollout_promote", "rollout_abort")


def default_actor() -> str:
    """The OS user running the command."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0-100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least 1
    return ordered[int(rank) - 1]


@dataclass
class Moved:
    """An alias change as made: the alias, where it pointed, where it points now."""

    alias: str
    before: str | None
    after: str | None


class Rollouts:
    """Alias changes and rollouts of the service whose records are ``sessions`` and registry ``root``."""

    def __init__(self, sessions: sessionmaker, registry: Path | str) -> None:
        self.sessions = sessions
        self.registry = Registry(registry)

    # --- aliases ---------------------------------------------------------------------------------

    def current(self, alias: str) -> str:
        """The version ``alias`` points at (TuneshipError: no such alias)."""
        version = self.registry.aliases().get(alias)
        if version is None:
            known = ", ".join(sorted(self.registry.aliases())) or "none"
            raise TuneshipError(f"no alias {alias!r} in the registry {self.registry.root} (aliases: {known})")
        return version

    def promote(self, version: str, actor: str, reason: str | None) -> Moved:
        """Point the alias of ``version`` (``tickets@3``) at it; recorded as ``promote``."""
        alias, number = split_version(version)
        if number is None:
            raise TuneshipError(f"{version!r} is not a version: name one as ALIAS@N (tickets@3)")
        before = self.current(alias)
        self._refuse_during_rollout(alias, "promote")
        if before == version:
            raise TuneshipError(f"{alias} already points at {version}")
        self.registry.set_alias(alias, version)
        self._audit(alias, "promote", before, version, actor, reason)
        return Moved(alias, before, version)

    def rollback(self, alias: str, actor: str, reason: str | None) -> Moved:
        """Point ``alias`` back at the version it had before the current one; recorded as ``rollback``."""
        before = self.current(alias)
        self._refuse_during_rollout(alias, "roll back")
        target = self.previous(alias, before)
        self.registry.set_alias(alias, target)
        self._audit(alias, "rollback", before, target, actor, reason)
        return Moved(alias, before, target)

    def previous(self, alias: str, current: str) -> str:
        """The version before ``current``: replaying the audit, each promotion stacks a version and
        each rollback takes one off; without an audited predecessor, the next lower version number."""
        stack: list[str] = []
        for change in reversed(self.history(alias, limit=None)):
            if change.action in ("promote", "rollout_promote") and change.to_version:
                if not stack and change.from_version:
                    stack.append(change.from_version)
                stack.append(change.to_version)
            elif change.action == "rollback" and stack:
                stack.pop()
                if not stack and change.to_version:
                    stack.append(change.to_version)
        if len(stack) >= 2 and stack[-1] == current:
            return stack[-2]
        number = split_version(current)[1] or 0
        lower = [e.name for e in self.registry.versions(alias) if (e.number or 0) < number]
        if not lower:
            raise TuneshipError(
                f"{alias} points at {current}, and there is no earlier version to roll back to"
            )
        return lower[-1]

    def history(self, alias: str, limit: int | None = 50) -> list[AliasChange]:
        """The alias's changes, newest first."""
        query = select(AliasChange).where(AliasChange.alias == alias).order_by(AliasChange.seq.desc())
        with self.sessions() as session:
            return list(session.scalars(query.limit(limit) if limit else query))

    def _audit(
        self,
        alias: str,
        action: str,
        before: str | None,
        after: str | None,
        actor: str,
        reason: str | None,
        data: dict[str, Any] | None = None,
        session: Session | None = None,
    ) -> None:
        row = AliasChange(alias=alias, action=action, from_version=before, to_version=after,
                          actor=actor, reason=reason, data=data)  # fmt: skip
        if session is not None:
            session.add(row)
            return
        with self.sessions.begin() as own:
            own.add(row)

    def _refuse_during_rollout(self, alias: str, what: str) -> None:
        active = self.active(alias)
        if active is not None:
            raise TuneshipError(
                f"a rollout of {alias} to {active.candidate} ({active.percent:g}%) is active: finish it "
                f"first (tuneship rollout promote|abort {alias}), then {what}"
            )

    # --- rollouts --------------------------------------------------------------------------------

    def active(self, alias: str) -> Rollout | None:
        """The alias's active rollout, if any."""
        query = select(Rollout).where(Rollout.alias == alias, Rollout.state == "active")
        with self.sessions() as session:
            return session.scalars(query.order_by(Rollout.seq.desc())).first()

    def latest(self, alias: str) -> Rollout:
        """The alias's newest rollout, active or finished (TuneshipError: none)."""
        query = select(Rollout).where(Rollout.alias == alias).order_by(Rollout.seq.desc())
        with self.sessions() as session:
            found = session.scalars(query).first()
        if found is None:
            raise TuneshipError(
                f"no rollout of {alias!r} yet (tuneship rollout start {alias} --candidate ...)"
            )
        return found

    def check_start(self, alias: str, candidate: str, percent: float) -> str:
        """What ``start`` would refuse, before the gate's offline checks run; returns the current version."""
        current = self.current(alias)
        if split_version(candidate)[0] != alias or split_version(candidate)[1] is None:
            raise TuneshipError(f"--candidate {candidate!r} is not a version of {alias} ({alias}@N)")
        confined(self.registry.root, candidate)
        if candidate == current:
            raise TuneshipError(f"{alias} already points at {candidate}: nothing to roll out")
        if not 0 < percent <= 100:
            raise TuneshipError(f"--percent {percent:g}: give a share of traffic in (0, 100]")
        active = self.active(alias)
        if active is not None and active.candidate != candidate:
            raise TuneshipError(
                f"a rollout of {alias} to {active.candidate} is active: promote or abort it first"
            )
        return current

    def start(
        self, alias: str, candidate: str, percent: float, actor: str, reason: str | None, gate: dict | None
    ) -> Rollout:
        """Send ``percent`` of the alias's traffic to ``candidate``; recorded as ``rollout_start``.

        Run again for the active rollout's candidate, it changes the share (users who had the
        candidate keep it when the share grows) and, given one, the gate.
        """
        current = self.check_start(alias, candidate, percent)
        with self.sessions.begin() as session:
            rollout = session.scalars(
                select(Rollout).where(Rollout.alias == alias, Rollout.state == "active")
            ).first()
            data: dict[str, Any] = {"percent": percent}
            if rollout is None:
                rollout = Rollout(alias=alias, current=current, candidate=candidate, percent=percent,
                                  gate=gate or {}, actor=actor, reason=reason)  # fmt: skip
                session.add(rollout)
            else:
                data["previous_percent"] = rollout.percent
                rollout.percent = percent
                if gate is not None:
                    rollout.gate = gate
            if gate is not None:
                data["offline"] = gate.get("offline")
            session.flush()
            data["rollout"] = rollout.seq
            self._audit(alias, "rollout_start", current, candidate, actor, reason, data, session)
        return rollout

    def finish(
        self, alias: str, promote: bool, actor: str, reason: str | None, data: dict[str, Any]
    ) -> Rollout:
        """Promote the active rollout's candidate (the alias moves, then the rollout ends) or abort it
        (all traffic back to the current version); recorded as ``rollout_promote`` / ``rollout_abort``."""
        rollout = self.active(alias)
        if rollout is None:
            raise TuneshipError(f"no active rollout of {alias!r}")
        if promote:  # the alias moves first: meanwhile the split still sends users to one of the two
            self.registry.set_alias(alias, rollout.candidate)
        with self.sessions.begin() as session:
            row = session.get(Rollout, rollout.seq)
            assert row is not None
            row.state, row.ended_at = ("promoted" if promote else "aborted"), now()
            action = "rollout_promote" if promote else "rollout_abort"
            after = rollout.candidate if promote else rollout.current
            self._audit(alias, action, rollout.current, after, actor, reason,
                        {"rollout": rollout.seq, **data}, session)  # fmt: skip
        return row

    def stats(self, rollout: Rollout) -> dict[str, dict[str, Any]]:
        """Per version of the rollout (current first): live requests it routed, error rate, TTFT and
        end-to-end p50/p95 in ms, output tokens."""
        query = select(
            RequestRecord.version, RequestRecord.error, RequestRecord.ttft_ms,
            RequestRecord.latency_ms, RequestRecord.output_tokens,
        ).where(RequestRecord.rollout_id == rollout.seq)  # fmt: skip
        with self.sessions() as session:
            rows = session.execute(query).all()
        stats = {}
        for version in (rollout.current, rollout.candidate):
            mine = [r for r in rows if r.version == version]
            ttft = [r.ttft_ms for r in mine if r.ttft_ms is not None]
            latency = [r.latency_ms for r in mine]
            errors = sum(bool(r.error) for r in mine)
            stats[version] = {
                "version": version, "requests": len(mine), "errors": errors,
                "error_rate": errors / len(mine) if mine else 0.0, "ttft_count": len(ttft),
                "ttft_p50_ms": percentile(ttft, 50), "ttft_p95_ms": percentile(ttft, 95),
                "latency_p50_ms": percentile(latency, 50), "latency_p95_ms": percentile(latency, 95),
                "output_tokens": sum(r.output_tokens or 0 for r in mine),
            }  # fmt: skip
        return stats
