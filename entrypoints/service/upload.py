"""A multipart upload streamed to disk in chunks, with a size limit, never held whole in memory.

Starlette's own form parsing spools the whole body before the handler runs; this reads the
request stream as it arrives, writes the file part to a temporary file in the service's file
folder (off the event loop), and stops at the limit. An upload cut off midway leaves nothing.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header

from tuneship.entrypoints.service.schemas import APIError

FIELD_LIMIT = 4096  # bytes of a plain form field (purpose, ...)
FLUSH = 1 << 20  # write to disk once this much of the file part has arrived
DRAIN = 64 << 20  # read (and drop) this much past the limit, so the client sees the 413 it caused
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")  # what the training reader recognises


def clean_filename(name: str) -> str:
    """The client's filename as metadata: its last path component, printable, at most 256 characters."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    return base[:256] or "upload.jsonl"


def stored_suffix(filename: str) -> str:
    """The suffix the stored copy gets, from a fixed list (the name itself is never used as a path)."""
    suffix = Path(filename).suffix.lower()
    return suffix if suffix in SUFFIXES else ".jsonl"


@dataclass
class Upload:
    """What arrived: the form's fields, and the file part's name, size and temporary path."""

    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    path: Path | None = None
    size: int = 0
    complete: bool = False


class _FormReader:
    """Callbacks of python-multipart's streaming parser, collecting one file part and small fields."""

    def __init__(self, folder: Path) -> None:
        self.upload = Upload()
        self.folder = folder
        self.pending: list[bytes] = []
        self._headers: dict[str, str] = {}
        self._header = [b"", b""]
        self._name: str | None = None
        self._value = bytearray()
        self._file_part = False
        self.files_seen = 0

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._header.__setitem__(0, self._header[0] + d[s:e]),
            "on_header_value": lambda d, s, e: self._header.__setitem__(1, self._header[1] + d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers, self._name, self._value, self._file_part = {}, None, bytearray(), False

    def _header_end(self) -> None:
        self._headers[self._header[0].decode("latin-1").lower()] = self._header[1].decode("latin-1")
        self._header = [b"", b""]

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", ""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options:
            self.files_seen += 1
            if self.files_seen > 1:
                raise APIError(400, "one file per upload", param="file")
            self._file_part = True
            self.upload.filename = clean_filename(options[b"filename"].decode("utf-8", "replace"))
            self.upload.path = self.folder / f".upload-{secrets.token_hex(8)}"

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file_part:
            self.pending.append(bytes(data[start:end]))
            self.upload.size += end - start
        elif len(self._value) + end - start <= FIELD_LIMIT:
            self._value += data[start:end]
        else:
            raise APIError(400, f"form field {self._name!r} is too long", param=self._name)

    def _part_end(self) -> None:
        if self._file_part:
            self.upload.complete = True
        elif self._name:
            self.upload.fields[self._name] = self._value.decode("utf-8", "replace")


def _boundary(content_type: str) -> bytes:
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise APIError(400, "expected a multipart/form-data upload with a file part", param="file")
    return options[b"boundary"]


async def receive_upload(request: Any, folder: Path, limit: int) -> Upload:
    """Read a multipart request into ``folder/.upload-*``; raises APIError (413 beyond ``limit``).

    On any failure, a client that disconnects included, the temporary file is removed.
    """
    declared = int(request.headers.get("content-length") or 0)
    if declared > limit + DRAIN:
        raise APIError(413, _too_large(limit), code="file_too_large", param="file")
    reader = _FormReader(folder)
    parser = MultipartParser(_boundary(request.headers.get("content-type", "")), reader.callbacks())
    handle = None
    try:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if reader.upload.size > limit:  # past the limit: drain a little so the client reads the 413
                if received > limit + DRAIN:
                    break
                continue
            parser.write(chunk)
            if reader.upload.path is not None and handle is None:
                handle = open(reader.upload.path, "wb")  # noqa: SIM115 (closed below)
            if handle is not None and sum(map(len, reader.pending)) >= FLUSH:
                await asyncio.to_thread(_write, handle, reader.pending)
        if reader.upload.size > limit:
            raise APIError(413, _too_large(limit), code="file_too_large", param="file")
        parser.finalize()
        if handle is not None:
            await asyncio.to_thread(_write, handle, reader.pending)
        if not reader.upload.complete:
            raise APIError(400, "the upload has no complete file part ('file')", param="file")
        return reader.upload
    except BaseException:
        if reader.upload.path is not None:
            reader.upload.path.unlink(missing_ok=True)
        raise
    finally:
        if handle is not None:
            handle.close()


def _write(handle: Any, pending: list[bytes]) -> None:
    for piece in pending:
        handle.write(piece)
    pending.clear()


def _too_large(limit: int) -> str:
    return f"the file is larger than this service's upload limit of {limit / (1 << 20):g} MiB"


def discard(upload: Upload) -> None:
    """Remove an upload's temporary file (a refused upload)."""
    if upload.path is not None and upload.path.exists():
        os.unlink(upload.path)
