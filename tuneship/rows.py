"""Rows from the data files people bring: JSONL, JSON, CSV, Parquet and ``datasets`` directories.

One reader for training data (:mod:`tuneship.train.data`) and evaluation items
(:mod:`tuneship.clients.data`), so both accept the same files and report the same problems.

* Text files are UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8", Notepad), or
  UTF-16 with one (PowerShell's ``>``); CRLF line ends, blank lines and a byte-order mark at
  the start of a line (files joined with ``cat``) are read as if they were not there.
* A row holding bytes that are not UTF-8, or a lone surrogate escape (JSON ``"\\ud83d"``: half
  of an emoji; ``json.loads`` accepts it but no tokenizer can encode it) is one problem,
  ``file:line: not valid UTF-8 (...)``, yielded in the row's place: the other rows are still read.
* JSON: a list of rows (or ``{"data": [...]}``), each located at the line it starts on; a
  ``.json`` file with one object per line is read as JSON Lines, and a ``.jsonl`` file holding
  one JSON document (a pretty-printed list) as JSON.
* CSV: the delimiter is the one the header line uses (``,``, ``;`` or tab: Excel picks by
  locale); columns without a name (a pandas index) are ignored; a row of empty cells is a
  blank line; cells of structured columns (:data:`JSON_COLUMNS`) holding JSON, or the Python
  literal pandas writes for a list, are decoded.
* Parquet and ``datasets``: Arrow gives every struct all keys seen in the column, so a key
  that is null in a row (absent where the row came from) is dropped; empty rows are skipped;
  string cells of structured columns are decoded as in CSV.
"""

from __future__ import annotations

import ast
import codecs
import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from tuneship.errors import DataError, RowError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# Columns whose cells hold lists or objects (in CSV and Parquet files they arrive as text).
JSON_COLUMNS = ("messages", "conversations", "tools", "functions", "tags", "references", "metadata")
CSV_DELIMITERS = (",", ";", "\t")
# The csv module refuses cells over 128 KiB by default; a conversation in one cell can be longer.
CSV_CELL_LIMIT = 1 << 30
# U+DC80..U+DCFF: where Python's "surrogateescape" puts a byte that is not UTF-8.
ESCAPED_BYTES = range(0xDC80, 0xDD00)


class Row(NamedTuple):
    """One row of a file: ``where`` is ``file:line`` (``file: row N`` in Parquet and datasets),
    ``number`` that line or row number, ``value`` the row or the :class:`RowError` in its place."""

    where: str
    number: int
    value: Any


def read_rows(path: Path | str) -> Iterator[Row]:
    """Yield every non-blank row of a data file or ``datasets`` directory, in order.

    Raises DataError for a problem of the whole file (not found, unsupported type, a JSON
    document that does not parse, not a datasets directory); a problem of one row is yielded
    as a :class:`RowError` in its place.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        yield from _arrow_rows(path, _datasets_table(path))
    elif path.suffix in (".jsonl", ".json"):
        yield from _json_rows(path, read_text(path))
    elif path.suffix == ".csv":
        yield from _csv_rows(path, read_text(path))
    elif path.suffix == ".parquet":
        yield from _arrow_rows(path, _parquet_rows(path))
    else:
        raise DataError(f"{path}: unsupported file type (use {', '.join(SUFFIXES)} or a datasets directory)")


def read_text(path: Path) -> str:
    """A text file's content: UTF-8 (a byte-order mark dropped) or UTF-16 with a byte-order mark.

    Bytes that are not UTF-8 are kept as surrogate escapes, so the row that holds them is the
    one reported. Raises DataError for a UTF-16 file that does not decode.
    """
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as e:
            reason = f"{e.reason} at byte {e.start}"
            raise DataError(f"{path}: not valid UTF-16 ({reason}); save the file as UTF-8") from None
    return data.removeprefix(codecs.BOM_UTF8).decode("utf-8", errors="surrogateescape")


def require_object(row: Any) -> dict:
    """The row itself when it is an object; else RowError saying what it is instead."""
    if isinstance(row, dict):
        return row
    if isinstance(row, list) and row and all(isinstance(m, dict) and "role" in m for m in row):
        raise RowError('a list of messages, not an object: write the row as {"messages": [...]}')
    kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    kind = kinds.get(type(row), "a number")
    raise RowError(f'the row is {kind}, not an object (one object per row, e.g. {{"messages": [...]}})')


def not_utf8(value: Any) -> str | None:
    """Why ``value`` (a row, walked through) cannot be encoded as UTF-8, or None when it can."""
    found = _unencodable(value, "")
    if found is None:
        return None
    at, char = found
    where = f" in '{at}'" if at else ""
    if ord(char) in ESCAPED_BYTES:
        return f"not valid UTF-8 (byte 0x{ord(char) - 0xDC00:02x}{where}; save the file as UTF-8)"
    return f"not valid UTF-8 (lone surrogate \\u{ord(char):04x}{where}: half of a character pair)"


def _unencodable(value: Any, at: str) -> tuple[str, str] | None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return at, value[e.start]
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _unencodable(key, at) or _unencodable(item, f"{at}.{key}" if at else str(key))
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if found := _unencodable(item, f"{at}[{i}]"):
                return found
    return None


def _checked(where: str, number: int, value: Any) -> Row:
    reason = not_utf8(value)
    return Row(where, number, RowError(reason) if reason else value)


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) of the non-blank lines; CR of CRLF and a leading BOM dropped."""
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.strip().removeprefix("\ufeff").strip()
        if line:
            yield lineno, line


def _json_rows(path: Path, text: str) -> Iterator[Row]:
    if not text.strip():
        return
    if _is_json_lines(path, text):
        yield from _json_lines(path, text)
    else:
        yield from _json_document(path, text)


def _is_json_lines(path: Path, text: str) -> bool:
    """One JSON value per line, whatever the suffix says (a pretty-printed list is not)."""
    lines = (line for _, line in _lines(text))
    try:
        json.loads(next(lines, "null"))
    except json.JSONDecodeError:
        if path.suffix == ".json":
            return False
        try:
            json.loads(text)
        except json.JSONDecodeError:
            return True  # a JSONL file whose first row is broken: report it and read on
        return False
    return path.suffix == ".jsonl" or next(lines, None) is not None


def _json_lines(path: Path, text: str) -> Iterator[Row]:
    for lineno, line in _lines(text):
        where = f"{path}:{lineno}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            escaped = next((i for i, c in enumerate(line) if ord(c) in ESCAPED_BYTES), None)
            if escaped is not None:
                byte, column = ord(line[escaped]) - 0xDC00, escaped + 1
                reason = f"not valid UTF-8 (byte 0x{byte:02x} at column {column}; save the file as UTF-8)"
            else:
                reason = f"invalid JSON ({e.msg} at column {e.colno})"
            yield Row(where, lineno, RowError(reason))
            continue
        yield _checked(where, lineno, value)


def _json_document(path: Path, text: str) -> Iterator[Row]:
    """The rows of a JSON list (each at the line it starts on) or of ``{"data": [...]}``."""
    decoder = json.JSONDecoder()
    start = len(text) - len(text.lstrip())
    if not text.startswith("[", start):
        data = _parse(path, text)
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            for i, value in enumerate(data["data"], start=1):
                yield _checked(f"{path}: row {i}", i, value)
            return
        found = f"an object with keys {', '.join(map(str, data))}" if isinstance(data, dict) else "no list"
        raise DataError(f'{path}: expected a JSON list of rows (or {{"data": [...]}}), found {found}')
    i, line, counted = _skip_space(text, start + 1), 1, 0
    while not text.startswith("]", i):
        line, counted = line + text.count("\n", counted, i), i
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        yield _checked(f"{path}:{line}", line, value)
        i = _skip_space(text, end)
        if text.startswith(",", i):
            i = _skip_space(text, i + 1)
        elif not text.startswith("]", i):
            at = text.count("\n", 0, i) + 1
            raise DataError(f"{path}:{at}: invalid JSON (expected ',' or ']' after a row)")
    if text[i + 1 :].strip():
        raise DataError(f"{path}:{text.count(chr(10), 0, i) + 1}: invalid JSON (text after the list)")


def _parse(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _csv_rows(path: Path, text: str) -> Iterator[Row]:
    header_line = next((line for _, line in _lines(text)), "")
    delimiter = max(CSV_DELIMITERS, key=header_line.count)
    csv.field_size_limit(max(csv.field_size_limit(), CSV_CELL_LIMIT))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    names: list[str] | None = None
    previous = 0
    try:
        for cells in reader:
            lineno, previous = previous + 1, reader.line_num  # a quoted cell may span lines
            if not any(cell.strip() for cell in cells):
                continue
            if names is None:
                names = [cell.strip().removeprefix("\ufeff").strip() for cell in cells]
                continue
            yield _csv_row(f"{path}:{lineno}", lineno, names, cells)
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: not readable as CSV ({e})") from None


def _csv_row(where: str, lineno: int, names: list[str], cells: list[str]) -> Row:
    extra = cells[len(names) :]
    if len(cells) < len(names) or any(cell.strip() for cell in extra):
        return Row(where, lineno, RowError(f"{len(cells)} cells, but the header has {len(names)} columns"))
    row = {name: cell for name, cell in zip(names, cells, strict=False) if name}
    try:
        return _checked(where, lineno, decode_json_cells(row))
    except RowError as e:
        return Row(where, lineno, e)


def decode_json_cells(row: dict) -> dict:
    """Decode the text of structured columns (:data:`JSON_COLUMNS`) that hold a list or an object.

    An empty cell counts as absent. JSON, or the Python literal pandas writes for a list
    (``[{'role': 'user', ...}]``), is decoded; other text is left for the row's check to refuse.
    Raises RowError when the cell looks like JSON but is not.
    """
    out = dict(row)
    for key in JSON_COLUMNS:
        value = out.get(key)
        if not isinstance(value, str):
            continue
        text = value.strip()
        if not text:
            del out[key]
        elif text[0] in "[{":
            out[key] = _decode_cell(key, text)
    return out


def _decode_cell(key: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise RowError(f"column '{key}' is not valid JSON ({e.msg} at character {e.pos + 1})") from None
        if isinstance(value, (list, dict)):
            return value
        raise RowError(f"column '{key}' is not valid JSON ({e.msg} at character {e.pos + 1})") from None


def _parquet_rows(path: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()  # type: ignore[no-any-return]
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not readable as Parquet ({e})") from None


def _datasets_table(path: Path) -> Any:
    from datasets import DatasetDict, load_from_disk

    try:
        data = load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError/ValueError for non-dataset dirs
        raise DataError(f"{path}: not a datasets directory saved with save_to_disk ({e})") from None
    if isinstance(data, DatasetDict):
        if "train" not in data:
            raise DataError(f"{path}: a DatasetDict without a 'train' split ({', '.join(data)})")
        data = data["train"]
    return data


def _arrow_rows(path: Path, rows: Any) -> Iterator[Row]:
    for number, row in enumerate(rows, start=1):
        row = {str(k).removeprefix("\ufeff").strip(): v for k, v in _without_nulls(row).items()}
        if not any(v not in ("", [], {}) for v in row.values()):
            continue
        where = f"{path}: row {number}"
        try:
            yield _checked(where, number, decode_json_cells(row))
        except RowError as e:
            yield Row(where, number, e)


def _without_nulls(value: Any) -> Any:
    """Arrow's unified structs hold None for keys a row never had: drop those keys."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value
