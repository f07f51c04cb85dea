"""Read training data in the shapes people have and check every row before any model loads.

Files: JSONL, JSON (a list of rows), CSV, Parquet, and local ``datasets`` directories
(``save_to_disk``). Formats, detected from the first row (``--format`` overrides):

  * ``messages``:          {"messages": [{"role", "content", "weight"?}, ...]} (OpenAI fine-tuning format)
  * ``prompt-completion``: {"prompt": str, "completion": str}
  * ``alpaca``:            {"instruction": str, "input"?: str, "output": str, "system"?: str}
  * ``sharegpt``:          {"conversations": [{"from": "human"|"gpt"|"system", "value": str}, ...]}

Every format becomes one list of chat messages, so every example is rendered by the
model's chat template, the same one the server applies at inference. Assistant
messages carry a ``weight`` (1 = trained, 0 = context only, as in OpenAI's format).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from tuneship.errors import DataError

log = logging.getLogger(__name__)

# The data formats, written once: the config's choice type, and FORMATS for messages.
DataFormat = Literal["messages", "prompt-completion", "alpaca", "sharegpt"]
FORMATS: tuple[str, ...] = get_args(DataFormat)
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
}
MAX_REPORTED = 20
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass
class Example:
    """One conversation; ``where`` is the ``file:line`` it came from."""

    where: str
    messages: list[dict]


@dataclass
class Dataset:
    path: Path
    format: str
    examples: list[Example]
    problems: list[str] = field(default_factory=list)  # rows skipped with --skip-invalid


class RowError(ValueError):
    """What is wrong with one row (the message names it for the user)."""


def read_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, row)``; a row that cannot be parsed is yielded as a RowError."""
    if path.is_dir():
        yield from _read_datasets_dir(path)
    elif path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield f"{path}:{lineno}", json.loads(line)
                    except json.JSONDecodeError as e:
                        yield f"{path}:{lineno}", RowError(f"invalid JSON ({e.msg} at column {e.colno})")
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(f'{path}: expected a JSON list of rows (or {{"data": [...]}})')
        for i, row in enumerate(data):
            yield f"{path}: row {i + 1}", row
    elif path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            for row in reader:
                # line of the row's last physical line, header is line 1
                yield f"{path}:{reader.line_num}", _decode_json_cells(row)
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}: row {i + 1}", row
    else:
        raise DataError(f"{path}: unsupported file type (use {', '.join(SUFFIXES)} or a datasets directory)")


def _read_datasets_dir(path: Path) -> Iterator[tuple[str, Any]]:
    from datasets import DatasetDict, load_from_disk

    try:
        data = load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError/ValueError for non-dataset dirs
        raise DataError(f"{path}: not a datasets directory saved with save_to_disk ({e})") from None
    if isinstance(data, DatasetDict):
        if "train" not in data:
            raise DataError(f"{path}: a DatasetDict without a 'train' split ({', '.join(data)})")
        data = data["train"]
    for i, row in enumerate(data):
        yield f"{path}: row {i + 1}", row


def _decode_json_cells(row: dict) -> dict:
    """CSV cells holding JSON lists (messages/conversations) are decoded."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in ("messages", "conversations") and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        out[key] = value
    return out


def detect_format(row: Any) -> str | None:
    if not isinstance(row, dict):
        return None
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row or "output" in row:
        return "alpaca"
    if "prompt" in row or "completion" in row:
        return "prompt-completion"
    return None


def _text(row: dict, key: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None or (value == "" and not required):
        if required:
            raise RowError(f"missing field '{key}'")
        return ""
    if not isinstance(value, str):
        raise RowError(f"field '{key}' is not a string")
    if required and not value.strip():
        raise RowError(f"field '{key}' is empty")
    return value


def to_messages(row: Any, fmt: str) -> list[dict]:
    """Convert one row of format ``fmt`` into checked chat messages, or raise RowError."""
    if not isinstance(row, dict):
        raise RowError("expected an object (a JSON object per row)")
    if fmt == "messages":
        return check_messages(row.get("messages"), key="messages")
    if fmt == "sharegpt":
        turns = row.get("conversations")
        if not isinstance(turns, list) or not turns:
            raise RowError("'conversations' must be a non-empty list")
        messages = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict):
                raise RowError(f"conversations[{i}] is not an object")
            speaker = turn.get("from")
            if speaker not in SHAREGPT_ROLES:
                raise RowError(
                    f"conversations[{i}] has unknown speaker {speaker!r} "
                    f"(expected one of {', '.join(SHAREGPT_ROLES)})"
                )
            messages.append({"role": SHAREGPT_ROLES[speaker], "content": turn.get("value")})
        return check_messages(messages, key="conversations")
    if fmt == "alpaca":
        instruction, extra = _text(row, "instruction"), _text(row, "input", required=False)
        system = _text(row, "system", required=False)
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = [{"role": "system", "content": system}] if system.strip() else []
        messages += [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": _text(row, "output")},
        ]
        return check_messages(messages, key="row")
    prompt, completion = _text(row, "prompt"), _text(row, "completion")
    return [
        {"role": "user", "content": prompt, "weight": 1},
        {"role": "assistant", "content": completion, "weight": 1},
    ]


def check_messages(messages: Any, key: str) -> list[dict]:
    """Roles, content, weights and turn order: system first, then user/assistant alternating."""
    if not isinstance(messages, list) or not messages:
        raise RowError(f"'{key}' must be a non-empty list")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RowError(f"{key}[{i}] is not an object")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise RowError(f"{key}[{i}] has unknown role {role!r} (expected one of {', '.join(ROLES)})")
        if not isinstance(content, str):
            raise RowError(f"{key}[{i}] ({role}) content is not a string")
        if not content.strip():
            raise RowError(f"{key}[{i}] ({role}) has empty content")
        weight = m.get("weight", 1)
        if role == "assistant" and weight not in (0, 1):
            raise RowError(f"{key}[{i}] weight must be 0 or 1, got {weight!r}")
        clean.append({"role": role, "content": content, "weight": int(weight) if role == "assistant" else 0})
    turns = clean[1:] if clean[0]["role"] == "system" else clean
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            position = i + (len(clean) - len(turns))
            raise RowError(
                f"wrong turn order: {key}[{position}] is {m['role']}, expected {expected} "
                "(system first, then user and assistant alternating)"
            )
    if not turns or turns[-1]["role"] != "assistant":
        raise RowError("no assistant turn at the end (nothing to learn)")
    if not any(m["weight"] for m in turns if m["role"] == "assistant"):
        raise RowError("every assistant turn has weight 0 (nothing to learn)")
    return clean


def load_dataset(path: Path | str, fmt: str | None = None, skip_invalid: bool = False) -> Dataset:
    """Read and check every row; all problems are reported at once as ``file:line: reason``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if fmt is not None and fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    examples: list[Example] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    for where, row in read_rows(path):
        if isinstance(row, RowError):
            problems.append(f"{where}: {row}")
            continue
        if fmt is None:
            fmt = detect_format(row)
            if fmt is None:
                raise DataError(
                    f"{where}: cannot tell the format of the data; expected one of "
                    f"{', '.join(FORMATS)} (keys: messages, prompt/completion, "
                    "instruction/output, conversations), or pass --format"
                )
        try:
            messages = to_messages(row, fmt)
        except RowError as e:
            problems.append(f"{where}: {e}")
            continue
        key = json.dumps(messages, sort_keys=True)
        if key in seen:
            problems.append(f"{where}: exact duplicate of {seen[key]}")
            continue
        seen[key] = where
        examples.append(Example(where, messages))
    raise_or_skip(path, problems, skip_invalid)
    if not examples:
        raise DataError(f"{path}: no usable rows")
    return Dataset(path, fmt or "messages", examples, problems)


def raise_or_skip(path: Path, problems: list[str], skip_invalid: bool) -> None:
    """Refuse invalid data (one report, capped) unless the user asked to skip it."""
    if not problems:
        return
    if not skip_invalid:
        shown = problems[:MAX_REPORTED]
        if len(problems) > MAX_REPORTED:
            shown.append(f"... and {len(problems) - MAX_REPORTED} more")
        raise DataError(f"{path}: {len(problems)} invalid row(s); fix them or pass --skip-invalid", shown)
    log.warning("Skipping %d invalid row(s) in %s (--skip-invalid)", len(problems), path)
