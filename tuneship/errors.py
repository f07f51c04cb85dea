"""The project's exceptions. Library code raises these; the CLI turns them into one line."""

from __future__ import annotations


class TuneshipError(Exception):
    """A problem the user can fix (bad input, missing file, refused operation)."""


class DataError(TuneshipError):
    """A dataset file is unreadable or has invalid rows."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = problems or []
        detail = "".join(f"\n  {p}" for p in self.problems)
        super().__init__(message + detail)


class ModelError(TuneshipError):
    """A base model cannot be found, downloaded or loaded."""


class ArtifactError(TuneshipError):
    """An artifact (run, adapter, export) is missing, incomplete or inconsistent."""


class AdapterNotFoundError(ArtifactError):
    """No adapter of that name or path (a server answers 404)."""


class AdapterRefusedError(ArtifactError):
    """An adapter exists but cannot be served as it is; the message says why and what to do (400)."""


class NotAllowedError(TuneshipError):
    """The caller may not do this on this server, whoever they are (a server answers 403)."""


class ServerError(TuneshipError):
    """The vLLM server failed to start or stopped answering."""


class EvalError(TuneshipError):
    """An evaluation could not run (unreachable endpoint, unknown model, bad data)."""


class RowError(ValueError):
    """What is wrong with one data row; readers yield it in the row's place, so the other rows are
    still checked and every problem is reported at once as ``file:line: reason``."""
