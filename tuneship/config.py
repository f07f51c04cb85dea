"""Settings as pydantic models: defaults < YAML file < CLI flags, validated whenever one is built.

Each stage's settings are one :class:`Settings` model: ``Literal`` choices, ``Field`` bounds,
a default and a one-line ``description`` per field, cross-field checks in a model validator.
From that one model come the YAML loading (:func:`load_config`), the click options
(:func:`options_from`) and the JSON Schema (``Model.model_json_schema()``), so no choice
list, default or help text is written twice.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from tuneship.artifacts import read_yaml
from tuneship.errors import TuneshipError

S = TypeVar("S", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])


class Settings(BaseModel):
    """A group of settings: unknown keys refused, checked when built and on every assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


def refuse(problems: list[str]) -> None:
    """End a model validator: every cross-field problem in one error (none: nothing happens)."""
    if problems:
        raise ValueError("; ".join(problems))


def describe_errors(error: ValidationError) -> str:
    """A pydantic error as one line that names every problem: ``invalid settings: a: ...; b: ...``."""
    problems = []
    for e in error.errors():
        where = ".".join(str(part) for part in e["loc"])
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "missing":
            message = "required"
        elif e["type"] == "extra_forbidden":
            message = "unknown setting"
        elif e["type"] != "value_error":
            message = f"{message[:1].lower()}{message[1:]} (got {e['input']!r})"
        problems.append(f"{where}: {message}" if where else message)
    return "invalid settings: " + "; ".join(problems)


def _nested(cls: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Fields of ``cls`` that are settings models themselves (their fields get flat flags)."""
    return {
        name: f.annotation
        for name, f in cls.model_fields.items()
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
    }


def load_config(cls: type[S], path: Path | str | None = None, **overrides: Any) -> S:
    """Build ``cls`` from its defaults, then a YAML file, then the non-None ``overrides``.

    Overrides may name a nested model's field flat (``max_tokens`` for ``sampling.max_tokens``),
    as the generated CLI options do. Raises :class:`TuneshipError` with one line naming every
    unknown key or every invalid value.
    """
    values: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(Path(path)) or {}
        if not isinstance(data, dict):
            raise TuneshipError(f"{path}: expected a mapping of settings")
        values.update(data)
    nested = _nested(cls)
    owner = {sub: name for name, model in nested.items() for sub in model.model_fields}
    unknown = []
    for key, value in overrides.items():
        if value is None:
            continue
        if key in cls.model_fields:
            values[key] = value
        elif key in owner:
            parent = values.get(owner[key])
            parent = parent.model_dump() if isinstance(parent, BaseModel) else dict(parent or {})
            values[owner[key]] = {**parent, key: value}
        else:
            unknown.append(key)
    unknown += [k for k in values if k not in cls.model_fields]
    if unknown:
        known = ", ".join(sorted(cls.model_fields))
        raise TuneshipError(f"unknown setting(s): {', '.join(sorted(unknown))} (known: {known})")
    try:
        return cls.model_validate(values)
    except ValidationError as e:
        raise TuneshipError(describe_errors(e)) from None


def flag_name(field: str) -> str:
    """The CLI flag of a field: ``lora_r`` -> ``--lora-r``."""
    return "--" + field.replace("_", "-")


def _parse_pairs(param: Any, values: tuple[str, ...]) -> dict[str, str]:
    import click

    pairs = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key or not rest:
            raise click.BadParameter(f"{value!r}: expected {param.metavar}", param=param)
        pairs[key] = rest
    return pairs


def _click_shape(annotation: Any) -> tuple[dict[str, Any], Callable[[Any, Any], Any]]:
    """click keyword arguments for a field's annotation, and how to convert the parsed value."""
    import click

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):  # X | None: the flag is optional anyway
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _click_shape(inner[0])
        # e.g. float | Literal["auto"]: the text goes to the model, which knows the choices
        names = [str(a) for i in inner for a in (typing.get_args(i) or (i.__name__.upper(),))]
        return {"type": str, "metavar": "|".join(names)}, lambda param, value: value
    if origin is Literal:
        return {"type": click.Choice([str(a) for a in args])}, lambda param, value: value
    if origin is list:
        return {"multiple": True}, lambda param, value: list(value)
    if origin is dict:
        return {"multiple": True, "metavar": "NAME=VALUE"}, _parse_pairs
    if annotation is bool:
        return {"is_flag": True}, lambda param, value: value
    if annotation in (int, float, str):
        return {"type": annotation}, lambda param, value: value
    raise TypeError(f"no click option for {annotation!r}")


def _given(convert: Callable[[Any, Any], Any]) -> Callable[[Any, Any, Any], Any]:
    """A click callback: the converted value when given (flag or environment), else None."""
    from click.core import ParameterSource

    def callback(ctx: Any, param: Any, value: Any) -> Any:
        if ctx.get_parameter_source(param.name) in (ParameterSource.DEFAULT, None):
            return None  # absent: the model's default, or a YAML file's value, holds
        return convert(param, value)

    return callback


def _flat_fields(cls: type[BaseModel], exclude: Iterable[str]) -> list[tuple[str, Any]]:
    fields: list[tuple[str, Any]] = []
    nested = _nested(cls)
    for name, info in cls.model_fields.items():
        if name in nested:
            fields += _flat_fields(nested[name], exclude)
        elif name not in exclude:
            fields.append((name, info))
    names = [name for name, _ in fields]
    assert len(names) == len(set(names)), f"{cls.__name__}: two settings share a flag"
    return fields


def options_from(
    cls: type[BaseModel],
    exclude: Iterable[str] = (),
    flags: Mapping[str, str] | None = None,
    envvars: Mapping[str, str] | None = None,
    metavars: Mapping[str, str] | None = None,
    config_file: bool = False,
) -> Callable[[F], F]:
    """A decorator that adds one click option per field of ``cls`` (nested models' fields flat).

    The flag is the field's name (``--lora-r``); ``flags`` adds a short or historic name
    (``{"learning_rate": "--lr"}``), shown first. Literal fields become a choice, bools an
    ``--x/--no-x`` switch, lists and dicts repeatable options (dicts as ``NAME=VALUE``). Help is
    the field's description and default. An absent flag passes None, so it never overrides a
    YAML file (:func:`load_config`). Required fields are required options unless the command
    also reads a ``config_file``.
    """
    import click

    flags, envvars, metavars = dict(flags or {}), dict(envvars or {}), dict(metavars or {})
    fields = _flat_fields(cls, exclude)

    def decorate(fn: F) -> F:
        for name, info in reversed(fields):
            kwargs, convert = _click_shape(info.annotation)
            decls = [flags[name]] if name in flags else []
            if kwargs.get("is_flag"):
                decls.insert(0, f"{flag_name(name)}/--no-{name.replace('_', '-')}")
            else:
                decls.append(flag_name(name))
            help = info.description or ""
            required = info.is_required()
            default = None if required else info.get_default(call_default_factory=True)
            if isinstance(default, (list, dict)):
                default = tuple(default)
            if required and config_file:
                help += " (required, here or in --config)"
            if name in metavars:
                kwargs["metavar"] = metavars[name]
            if name in envvars:
                kwargs.update(envvar=envvars[name], show_envvar=True)
            if default is not None:  # click 8.2+: an explicit None is a value, not "missing"
                kwargs["default"] = default
            fn = click.option(
                *decls,
                name,
                show_default=default not in ("", None, ()),
                required=required and not config_file,
                help=help,
                callback=_given(convert),
                **kwargs,
            )(fn)
        return fn

    return decorate
