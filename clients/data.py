"""Evaluation items: JSONL rows with ``messages`` or ``prompt`` and one or more references.

Accepted rows:
  * {"messages": [..., {"role": "assistant", "content": REF}], "tags": [...]}
    (the training format: the last assistant turn becomes the reference)
  * {"messages": [...], "reference": REF | [REF, ...]}
  * {"prompt": str, "completion": REF} or {"prompt": str, "reference": REF | [REF, ...]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tuneship.errors import EvalError


@dataclass
class EvalItem:
    id: str
    messages: list[dict]
    references: list[str]
    tags: list[str] = field(default_factory=list)


def _references(row: dict) -> list[str] | None:
    ref = row.get("reference", row.get("references", row.get("completion")))
    if isinstance(ref, str):
        return [ref]
    if isinstance(ref, list) and ref and all(isinstance(r, str) for r in ref):
        return ref
    return None


def parse_row(row: dict, item_id: str) -> EvalItem:
    tags = [str(t) for t in row.get("tags", [])] if isinstance(row.get("tags"), list) else []
    refs = _references(row)
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise ValueError("'messages' must be a non-empty list of objects")
        if refs is None and messages[-1].get("role") == "assistant":
            refs, messages = [str(messages[-1].get("content", ""))], messages[:-1]
        if not messages or messages[-1].get("role") != "user":
            raise ValueError("the prompt must end with a user message")
    elif isinstance(row.get("prompt"), str):
        messages = [{"role": "user", "content": row["prompt"]}]
    else:
        raise ValueError("needs 'messages' or a string 'prompt'")
    if refs is None:
        raise ValueError("no reference (last assistant turn, 'reference' or 'completion')")
    return EvalItem(str(row.get("id", item_id)), messages, refs, tags)


def load_items(path: Path | str, limit: int | None = None) -> list[EvalItem]:
    """Read evaluation items; every bad row is reported as ``file:line: reason``."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"{path}: file not found")
    items, problems = [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("expected a JSON object")
            items.append(parse_row(row, item_id=f"{path.stem}-{lineno}"))
        except (json.JSONDecodeError, ValueError) as e:
            problems.append(f"{path}:{lineno}: {e}")
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise EvalError(f"{path}: {len(problems)} invalid row(s):\n  " + "\n  ".join(problems[:20]) + more)
    if not items:
        raise EvalError(f"{path}: no evaluation rows")
    return items[:limit] if limit else items
