"""Settings as dataclasses: defaults < YAML file < CLI flags, checked once up front."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

from tuneship.artifacts import read_yaml
from tuneship.errors import TuneshipError

T = TypeVar("T")


def opt(default: Any, help: str) -> Any:
    """A dataclass field with a default and its one-line description (shown by --help)."""
    return dataclasses.field(default=default, metadata={"help": help})


def field_help(cls: type, name: str) -> str:
    """The one-line description of a config field (its ``help`` metadata)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    raise KeyError(name)


def load_config(cls: type[T], path: Path | str | None = None, **overrides: Any) -> T:
    """Build ``cls`` from its defaults, then a YAML file, then non-None overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(Path(path)) or {}
        if not isinstance(data, dict):
            raise TuneshipError(f"{path}: expected a mapping of settings")
        values.update(data)
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise TuneshipError(f"unknown setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    hints = typing.get_type_hints(cls)
    problems = []
    for name, value in values.items():
        expected = hints[name]
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            values[name] = float(value)
        elif expected in (int, float, str, bool) and not isinstance(value, expected):
            problems.append(f"{name}: expected {expected.__name__}, got {value!r}")
    if problems:
        raise TuneshipError("invalid settings: " + "; ".join(problems))
    config = cls(**values)
    check = getattr(config, "check", None)
    if check is not None:
        errors = check()
        if errors:
            raise TuneshipError("invalid settings: " + "; ".join(errors))
    return config
