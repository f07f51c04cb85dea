"""Read training/evaluation data and check every row before any model loads.

Accepted (JSONL, one object per line):
  * chat:              {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
  * prompt/completion: {"prompt": str, "completion": str}

Both become one conversational shape, ``{"prompt": [messages], "completion":
[assistant message]}``, so that every example is rendered by the model's chat
template, the same template the server applies at inference. Loss falls on the
final assistant turn only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tuneship.errors import DataError

ROLES = ("system", "user", "assistant")
MAX_REPORTED = 20


@dataclass
class Dataset:
    path: Path
    format: str  # "messages" or "prompt-completion"
    examples: list[dict]


def detect_format(row: dict) -> str | None:
    if "messages" in row:
        return "messages"
    if "prompt" in row or "completion" in row:
        return "prompt-completion"
    return None


def _check_messages(messages: object) -> tuple[list[dict] | None, str | None]:
    if not isinstance(messages, list) or not messages:
        return None, "'messages' must be a non-empty list"
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return None, f"message {i} is not an object"
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            return None, f"message {i} has unknown role {role!r} (expected one of {', '.join(ROLES)})"
        if not isinstance(content, str):
            return None, f"message {i} content is not a string"
        if not content.strip():
            return None, f"message {i} ({role}) has empty content"
        clean.append({"role": role, "content": content})
    if clean[-1]["role"] != "assistant":
        return None, "the last message must be from the assistant (nothing to learn otherwise)"
    return clean, None


def to_example(row: dict, fmt: str) -> tuple[dict | None, str | None]:
    """Convert one parsed row into the conversational prompt/completion shape, or say why not."""
    if fmt == "messages":
        messages, problem = _check_messages(row.get("messages"))
        if problem:
            return None, problem
        assert messages is not None
        if len(messages) < 2:
            return None, "needs at least one message before the assistant's answer"
        return {"prompt": messages[:-1], "completion": messages[-1:]}, None
    prompt, completion = row.get("prompt"), row.get("completion")
    for name, value in (("prompt", prompt), ("completion", completion)):
        if value is None:
            return None, f"missing field '{name}'"
        if not isinstance(value, str):
            return None, f"field '{name}' is not a string"
        if not value.strip():
            return None, f"field '{name}' is empty"
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "completion": [{"role": "assistant", "content": completion}],
    }, None


def load_dataset(path: Path | str, skip_invalid: bool = False) -> Dataset:
    """Load a JSONL file; report every bad row as ``file:line: reason`` in one error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    examples: list[dict] = []
    problems: list[str] = []
    fmt: str | None = None
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"{path}:{lineno}: invalid JSON ({e.msg})")
                continue
            if not isinstance(row, dict):
                problems.append(f"{path}:{lineno}: expected a JSON object")
                continue
            row_fmt = detect_format(row)
            if row_fmt is None:
                problems.append(f"{path}:{lineno}: neither 'messages' nor 'prompt'/'completion'")
                continue
            fmt = fmt or row_fmt
            if row_fmt != fmt:
                problems.append(f"{path}:{lineno}: {row_fmt} row in a {fmt} file")
                continue
            example, problem = to_example(row, fmt)
            if problem:
                problems.append(f"{path}:{lineno}: {problem}")
            else:
                examples.append(example)
    if problems and not skip_invalid:
        shown = problems[:MAX_REPORTED]
        if len(problems) > MAX_REPORTED:
            shown.append(f"... and {len(problems) - MAX_REPORTED} more")
        raise DataError(f"{path}: {len(problems)} invalid row(s); fix them or pass --skip-invalid", shown)
    if not examples:
        raise DataError(f"{path}: no usable rows")
    if problems:
        print(f"Skipped {len(problems)} invalid row(s) in {path}")
    return Dataset(path, fmt or "messages", examples)
