"""The adapter registry: a directory of named LoRA adapters, one subdirectory each.

    registry/
      tickets/   adapter_config.json  adapter_model.safetensors  tuneship.json (lineage)
                 chat_template.jinja (the template it was trained with)
      legal-v2/  ...

``tuneship adapters add NAME RUN_OR_ADAPTER`` copies a checked adapter in (atomically), as
safetensors (a ``.bin`` pickle is converted) and with a known wrapper prefix stripped from its
tensor names when that is exact (:func:`tuneship.adapters.check_adapter` says so);
``tuneship serve --registry registry`` serves all of them and, with an API key, lets
``tuneship adapters load NAME`` (or a first request for NAME) hot-load more — but only
from inside this directory: a name is one path component, and its resolved path
(symlinks followed) must stay inside the resolved root.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tuneship.adapter_weights import ADAPTER_BIN, write_safetensors
from tuneship.adapters import (
    AdapterReport,
    adapter_chat_template,
    adapter_hash,
    check_adapter,
    locate_adapter,
)
from tuneship.artifacts import ADAPTER_CONFIG, ADAPTER_WEIGHTS, CHAT_TEMPLATE, LINEAGE, atomic_dir
from tuneship.errors import AdapterNotFoundError, AdapterRefusedError, ArtifactError
from tuneship.lineage import read_lineage
from tuneship.models import ResolvedBase

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ADAPTER_FILES = (ADAPTER_CONFIG, LINEAGE, CHAT_TEMPLATE)  # and the weights, as safetensors


@dataclass
class Entry:
    name: str
    path: Path
    sha256: str
    base_name: str | None
    base_sha256: str | None
    chat_template_sha256: str | None = None  # the template it was trained with (None: not recorded)
    report: AdapterReport | None = None  # from ``add``: the check, with the repairs made and notes


def confined(root: Path | str, name: str) -> Path:
    """``root/name`` if ``name`` is a plain adapter name that resolves inside ``root``; else refuse."""
    if not NAME.match(name or ""):
        raise ArtifactError(f"{name!r} is not an adapter name (letters, digits, '.', '_', '-'; no paths)")
    root_real = Path(os.path.realpath(root))
    path = Path(os.path.realpath(root_real / name))
    if path.parent != root_real:
        raise ArtifactError(f"{name!r} resolves to {path}, outside the registry {root_real}")
    if not path.is_dir():
        raise AdapterNotFoundError(f"no adapter {name!r} in the registry {root_real}")
    return path


def confined_path(root: Path | str, path: Path | str) -> Path:
    """A path given for loading must be a registry entry: resolved, it is ``root/<name>``."""
    root_real = Path(os.path.realpath(root))
    real = Path(os.path.realpath(path))
    if real.parent != root_real:
        raise ArtifactError(f"{path} is outside the adapter registry {root_real}; only its adapters load")
    return confined(root_real, real.name)


def _template_sha256(path: Path) -> str | None:
    try:
        return adapter_chat_template(path).sha256
    except ArtifactError:  # inconsistent: listed anyway; serving and loading refuse it with the reason
        return None


class Registry:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def entries(self) -> list[Entry]:
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(self.root.iterdir()):
            if path.name.startswith(".") or not (path / ADAPTER_CONFIG).is_file():
                continue
            lineage = read_lineage(path)
            base = lineage.base_model if lineage else None
            found.append(
                Entry(
                    path.name,
                    path,
                    adapter_hash(path),
                    base.name if base else None,
                    base.weights_sha256 if base else None,
                    _template_sha256(path),
                )
            )
        return found

    def path(self, name: str) -> Path:
        return confined(self.root, name)

    def add(
        self, name: str, source: Path | str, force: bool = False, base: Path | str | None = None
    ) -> Entry:
        """Copy a checked adapter (config, weights, lineage, chat template) in as ``name``.

        The weights are written as safetensors, with the exact repairs the check names (a
        ``.bin`` converted, a wrapper's prefix stripped). The template comes from the adapter
        directory, else from its run directory (older runs). The tensors are checked against
        ``base`` (a model directory), else the base the adapter's lineage names. Raises
        AdapterRefusedError with every reason when vLLM could not serve it, or when ``name``
        is its base model's name (the name the base is served under); ArtifactError when
        ``name`` is taken (without ``force``) or not a name.
        """
        if not NAME.match(name):
            raise ArtifactError(f"{name!r} is not an adapter name (letters, digits, '.', '_', '-')")
        adapter = locate_adapter(source)
        report = check_adapter(adapter, base=base)
        if report.problems:
            raise AdapterRefusedError(f"{adapter} cannot be served as LoRA: " + "; ".join(report.problems))
        if report.base_name and name == report.base_name:
            raise AdapterRefusedError(
                f"{name!r} is the name of the adapter's base model, which a server serves under that "
                "name: vLLM cannot serve two models of one name; pick another adapter name"
            )
        if (self.root / name).exists() and not force:
            raise ArtifactError(
                f"adapter {name!r} is already in the registry {self.root}; pass --force to replace it"
            )
        template = adapter_chat_template(adapter).file
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_dir(self.root / name, force=force) as tmp:
            for file in ADAPTER_FILES:
                if (adapter / file).is_file():
                    shutil.copyfile(adapter / file, tmp / file)
            _copy_weights(adapter, tmp / ADAPTER_WEIGHTS, report)
            if template is not None and not (tmp / CHAT_TEMPLATE).is_file():  # an older run's
                shutil.copyfile(template, tmp / CHAT_TEMPLATE)
        entry = next(e for e in self.entries() if e.name == name)
        entry.report = report
        return entry


def _copy_weights(adapter: Path, target: Path, report: AdapterReport) -> None:
    """The adapter's weights as safetensors, with the check's exact repairs (if any) made."""
    source = adapter / ADAPTER_WEIGHTS
    if source.is_file() and not report.renames:
        shutil.copyfile(source, target)
        return
    write_safetensors(source if source.is_file() else adapter / ADAPTER_BIN, target, report.renames)


def check_served(
    adapters: Mapping[str, str], base: ResolvedBase, served_name: str
) -> dict[str, AdapterReport]:
    """Check every adapter (name -> directory) a server is to start with against its base.

    Returns each adapter's report (rank, notes). Raises AdapterRefusedError listing every
    problem of every adapter: what vLLM would refuse or ignore, a directory that needs the
    repairs ``tuneship adapters add`` makes, and a name that is the served base's.
    """
    problems, reports = [], {}
    for name, path in adapters.items():
        if name == served_name:
            problems.append(
                f"adapter {name} ({path}): {name!r} is the name this server serves the base model "
                "under, and vLLM cannot serve two models of one name; give the adapter another name"
            )
        report = reports[name] = check_adapter(path, base_sha256=base.weights_sha256, base=base.path)
        problems += [f"adapter {name} ({path}): {p}" for p in report.problems]
        problems += [
            f"adapter {name} ({path}): {fix}; register it first (tuneship adapters add {name} {path}) "
            "and serve the registry (--registry)"
            for fix in (report.fixes if report.fixable else [])
        ]
    if problems:
        raise AdapterRefusedError("refusing to serve:\n  " + "\n  ".join(problems))
    return reports
