"""Read training data in the shapes people have and check every row before any model loads.

Files: JSONL, JSON (a list of rows), CSV, Parquet, and local ``datasets`` directories
(``save_to_disk``). Formats, detected from the first row that fits one (``--format`` overrides):

  * ``messages``:          {"messages": [{"role", "content", "weight"?}, ...]} (OpenAI fine-tuning format)
  * ``prompt-completion``: {"prompt": str, "completion": str}
  * ``alpaca``:            {"instruction": str, "input"?: str, "output": str, "system"?: str}
  * ``sharegpt``:          {"conversations": [{"from": "human"|"gpt"|"system", "value": str}, ...]}
  * ``text``:              {"text": str} (plain text: language modelling on the whole row)
  * ``openai-dpo``:        {"input": {"messages", "tools"?}, "preferred_output": [assistant message],
                           "non_preferred_output": [assistant message]} (OpenAI's preference format)
  * ``preference``:        {"prompt"?, "chosen", "rejected"}: strings or message lists (Hugging Face/TRL)

The last two are preference pairs (:mod:`tuneship.train.preference`) for ``--method dpo``: a
:class:`PreferenceExample` holds the prompt's messages and the two answers.

Every chat format becomes one list of chat messages (an :class:`Example`), so every
conversation is rendered by the model's chat template, the same one the server applies at
inference. Assistant messages carry a ``weight`` (1 = trained, 0 = context only, as in
OpenAI's format). A ``text`` row is no conversation: it stays a :class:`TextExample`, trained
on every token with the end-of-sequence token appended, without a chat template.

Reading (encodings, byte-order marks, CRLF, blank lines, CSV cells holding JSON) is
:mod:`tuneship.rows`, shared with evaluation data.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from tuneship.errors import DataError, RowError
from tuneship.rows import read_rows, require_object
from tuneship.train.messages import check_messages, check_tools, from_sharegpt
from tuneship.train.preference import PREFERENCE_FORMATS, PreferenceExample, to_preference

log = logging.getLogger(__name__)

# The data formats, written once: the config's choice type, and FORMATS for messages.
DataFormat = Literal[
    "messages", "prompt-completion", "alpaca", "sharegpt", "text", "openai-dpo", "preference"
]
FORMATS: tuple[str, ...] = get_args(DataFormat)
# The keys that tell each format (for messages about a row that fits none).
FORMAT_KEYS = {
    "messages": "messages",
    "sharegpt": "conversations",
    "alpaca": "instruction/output",
    "prompt-completion": "prompt/completion",
    "text": "text",
    "openai-dpo": "input/preferred_output/non_preferred_output",
    "preference": "prompt/chosen/rejected",
}
MAX_REPORTED = 20


@dataclass
class Example:
    """One conversation; ``where`` is the ``file:line`` it came from."""

    where: str
    messages: list[dict]
    tools: list[dict] | None = None  # a messages row's tools (OpenAI's format), rendered by the template


@dataclass
class TextExample:
    """One plain-text row (format ``text``): language modelling on the whole of ``text``."""

    where: str
    text: str


@dataclass
class Dataset:
    path: Path
    format: str | None  # None: no row fits a format
    examples: list[Example | TextExample | PreferenceExample]
    problems: list[str] = field(default_factory=list)  # ``file:line: reason`` of every invalid row
    rows: int = 0  # rows read, valid or not


def detect_format(row: Any) -> str | None:
    """The format whose keys ``row`` has (None when it fits none, or is no object)."""
    if not isinstance(row, dict):
        return None
    if "messages" in row:
        return "messages"
    if "preferred_output" in row or "non_preferred_output" in row:
        return "openai-dpo"
    if "chosen" in row or "rejected" in row:
        return "preference"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row or "output" in row:
        return "alpaca"
    if "prompt" in row or "completion" in row:
        return "prompt-completion"
    if "text" in row:
        return "text"
    return None


def to_example(
    row: Any, where: str, fmt: str, detected_from: str | None = None
) -> Example | TextExample | PreferenceExample:
    """One checked example of format ``fmt``, or RowError.

    ``detected_from`` is the ``file:line`` the format was detected from (None: chosen by the
    user); with it, a row of another format, or of none, is refused as such.
    """
    row = require_object(row)
    own = detect_format(row)
    if detected_from is not None and own != fmt:
        if own is None:
            keys = ", ".join(repr(str(k)) for k in row) or "none"
            expected = ", ".join(f"{key} ({name})" for name, key in FORMAT_KEYS.items())
            raise RowError(f"keys {keys} fit no format; expected the keys of one of: {expected}")
        raise RowError(
            f"a {own} row ({FORMAT_KEYS[own]}), but the data's format is {fmt}, detected from {detected_from}"
        )
    if fmt == "text":
        return TextExample(where, _text(row, "text"))
    if fmt in PREFERENCE_FORMATS:
        return to_preference(row, fmt, where)
    return Example(where, to_messages(row, fmt), check_tools(row) if fmt == "messages" else None)


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
        return from_sharegpt(row)
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


def read_dataset(path: Path | str, fmt: str | None = None) -> Dataset:
    """Read and check every row, refusing none: invalid rows are in ``Dataset.problems``.

    The format is ``fmt``, or the format of the first row that fits one (``Dataset.format`` is
    None when no row does, and every row is then a problem). Raises DataError for an unknown
    ``fmt`` or a file that cannot be read at all.
    """
    path = Path(path)
    if fmt is not None and fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    rows = list(read_rows(path))
    detected_from = None  # stays None when the user chose the format
    if fmt is None:
        found = ((where, detect_format(row)) for where, _, row in rows if not isinstance(row, RowError))
        detected_from, fmt = next(((where, f) for where, f in found if f), ("", None))
    examples: list[Example | TextExample | PreferenceExample] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    for where, _, row in rows:
        try:
            if isinstance(row, RowError):
                raise row
            example = to_example(row, where, fmt or "", detected_from)
        except RowError as e:
            problems.append(f"{where}: {e}")
            continue
        key = json.dumps(_content(example), sort_keys=True)
        if key in seen:
            problems.append(f"{where}: exact duplicate of {seen[key]}")
            continue
        seen[key] = where
        examples.append(example)
    return Dataset(path, fmt, examples, problems, rows=len(rows))


def _content(example: Example | TextExample | PreferenceExample) -> Any:
    """What makes two examples the same (exact duplicates are refused)."""
    if isinstance(example, TextExample):
        return example.text
    if isinstance(example, PreferenceExample):
        return [example.prompt, example.chosen, example.rejected, example.tools]
    return [example.messages, example.tools]


def load_dataset(path: Path | str, fmt: str | None = None, skip_invalid: bool = False) -> Dataset:
    """Read and check every row; all problems are reported at once as ``file:line: reason``.

    Raises DataError naming every invalid row unless ``skip_invalid`` (then they are dropped,
    listed in ``Dataset.problems``), and when no row is usable.
    """
    data = read_dataset(path, fmt)
    raise_or_skip(data.path, data.problems, skip_invalid)
    if not data.examples:
        raise DataError(f"{data.path}: no usable rows")
    return data


def raise_or_skip(path: Path, problems: list[str], skip_invalid: bool) -> None:
    """Refuse invalid data (one report, capped) unless the user asked to skip it."""
    if not problems:
        return
    if not skip_invalid:
        shown = problems[:MAX_REPORTED]
        if len(problems) > MAX_REPORTED:
            shown.append(f"... and {len(problems) - MAX_REPORTED} more")
        raise DataError(f"{path}: {len(problems)} invalid row(s); fix them or pass --skip-invalid", shown)
    # The caller chose to skip; which flag or setting made it choose is not ours to say.
    log.warning("Skipping %d invalid row(s) in %s", len(problems), path)
