"""Captured traffic and its feedback as training rows (``tuneship data export --captured``).

Which answers become data, per captured response (its latest rating and latest correction):

* supervised (chat ``messages`` rows): a corrected answer trains its correction as the
  assistant turn; an up-rated one (rating 1) trains the answer as given; a down-rated one (-1)
  without a correction is dropped; a neutral or unrated one is dropped unless ``unrated`` asks
  for it. Earlier assistant turns of the conversation are context only (``weight: 0``).
* ``dpo`` (``prompt``/``chosen``/``rejected`` rows): a corrected answer gives one pair, the
  correction preferred over the answer given; everything else is dropped.

Rows are deduplicated: the same messages with the same final answer (for pairs: the same
chosen and rejected answers) appear once, the newest capture's.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from tuneship.entrypoints.service.db import CapturedResponse, Feedback


@dataclass
class Harvest:
    """The rows of an export and what was left out of them (counts by reason)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    captured: int = 0
    corrected: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def summary(self) -> str:
        """One line: what was read, kept and dropped."""
        dropped = ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items())) or "none"
        kept = f"{len(self.rows)} rows"
        return f"{self.captured} captured answers, {self.corrected} corrected; {kept}; dropped: {dropped}"


def timestamp(day: datetime.datetime | None) -> int | None:
    """Unix seconds of a date or time given without a zone (read as UTC)."""
    if day is None:
        return None
    return int(day.replace(tzinfo=day.tzinfo or datetime.timezone.utc).timestamp())


def _feedback(sessions: sessionmaker, ids: list[str]) -> dict[str, tuple[int | None, str | None]]:
    """Response id -> (latest rating, latest correction)."""
    latest: dict[str, tuple[int | None, str | None]] = {}
    with sessions() as session:
        for chunk in range(0, len(ids), 500):
            query = select(Feedback).where(Feedback.response_id.in_(ids[chunk : chunk + 500]))
            for f in session.scalars(query.order_by(Feedback.seq)):
                rating, correction = latest.get(f.response_id, (None, None))
                latest[f.response_id] = (
                    f.rating if f.rating is not None else rating,
                    f.correction if f.correction is not None else correction,
                )
    return latest


def _context(messages: list) -> list:
    """The conversation before the answer, its assistant turns marked context only (weight 0)."""
    return [
        {**m, "weight": 0} if isinstance(m, dict) and m.get("role") == "assistant" else m for m in messages
    ]


def harvest(
    sessions: sessionmaker,
    alias: str,
    since: int | None = None,
    until: int | None = None,
    dpo: bool = False,
    unrated: bool = False,
) -> Harvest:
    """The training rows of ``alias``'s captured answers from ``since`` (inclusive) to ``until``
    (exclusive), Unix seconds; newest first when deduplicating."""
    query = select(CapturedResponse).where(CapturedResponse.alias == alias)
    if since is not None:
        query = query.where(CapturedResponse.created_at >= since)
    if until is not None:
        query = query.where(CapturedResponse.created_at < until)
    with sessions() as session:
        captured = list(session.scalars(query.order_by(CapturedResponse.seq.desc())))
    feedback = _feedback(sessions, [c.response_id for c in captured])
    result, seen = Harvest(captured=len(captured)), set()
    for c in captured:
        rating, correction = feedback.get(c.response_id, (None, None))
        result.corrected += correction is not None
        row = _pair(c, correction, result) if dpo else _conversation(c, rating, correction, unrated, result)
        if row is None:
            continue
        key = json.dumps(row, sort_keys=True)
        if key in seen:
            result.drop("duplicates")
            continue
        seen.add(key)
        result.rows.append(row)
    result.rows.reverse()  # oldest first, as they were captured
    return result


def _conversation(
    c: CapturedResponse, rating: int | None, correction: str | None, unrated: bool, result: Harvest
) -> dict | None:
    if correction is not None:
        answer = correction
    elif rating == 1 or (unrated and rating in (None, 0)):
        answer = c.answer
    else:
        reasons = {-1: "down-rated without a correction", 0: "neutral", None: "unrated"}
        result.drop(reasons.get(rating, "unrated"))
        return None
    return {"messages": [*_context(c.messages), {"role": "assistant", "content": answer}]}


def _pair(c: CapturedResponse, correction: str | None, result: Harvest) -> dict | None:
    if correction is None:
        result.drop("without a correction")
        return None
    if correction.strip() == c.answer.strip():
        result.drop("corrections equal to the answer")
        return None
    return {
        "prompt": c.messages,
        "chosen": [{"role": "assistant", "content": correction}],
        "rejected": [{"role": "assistant", "content": c.answer}],
    }
