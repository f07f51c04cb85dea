"""Evaluation items: rows with ``messages`` or ``prompt`` and one or more references.

Files are read as training data is (:mod:`tuneship.rows`): JSONL, JSON, CSV, Parquet or a
datasets directory, UTF-8 with or without a byte-order mark, CRLF, blank lines, CSV cells
holding JSON; a row that is not valid UTF-8 is reported with its line. Accepted rows:
  * {"messages": [..., {"role": "assistant", "content": REF}], "tags": [...]}
    (the training format: the last assistant turn becomes the reference)
  * {"messages": [...], "reference": REF | [REF, ...]}
  * {"prompt": str, "completion": REF} or {"prompt": str, "reference": REF | [REF, ...]}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tuneship.chat import text_of
from tuneship.errors import DataError, EvalError, RowError
from tuneship.rows import read_rows, require_object


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
    """One evaluation item from a row; raises ValueError (RowError) saying what is wrong."""
    tags = [str(t) for t in row.get("tags", [])] if isinstance(row.get("tags"), list) else []
    refs = _references(row)
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise ValueError("'messages' must be a non-empty list of objects")
        if refs is None and messages[-1].get("role") == "assistant":
            refs, messages = [text_of(messages[-1].get("content"))], messages[:-1]
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
    """Read evaluation items; every bad row is reported as ``file:line: reason``.

    Raises EvalError naming every invalid row (first 20), or when the file holds no rows.
    """
    path = Path(path)
    items, problems = [], []
    try:
        for where, number, row in read_rows(path):
            try:
                if isinstance(row, RowError):
                    raise row
                items.append(parse_row(require_object(row), item_id=f"{path.stem}-{number}"))
            except ValueError as e:
                problems.append(f"{where}: {e}")
    except DataError as e:
        raise EvalError(str(e)) from None
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise EvalError(f"{path}: {len(problems)} invalid row(s):\n  " + "\n  ".join(problems[:20]) + more)
    if not items:
        raise EvalError(f"{path}: no evaluation rows")
    return items[:limit] if limit else items
