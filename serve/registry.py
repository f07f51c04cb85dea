"""The adapter registry: a directory of named LoRA adapters, one subdirectory each.

    registry/
      tickets/   adapter_config.json  adapter_model.safetensors  tuneship.json (lineage)
                 chat_template.jinja (the template it was trained with)
      legal-v2/  ...

``tuneship adapters add NAME RUN_OR_ADAPTER`` copies a checked adapter in (atomically);
``tuneship serve --registry registry`` serves all of them and, with an API key, lets
``tuneship adapters load NAME`` (or a first request for NAME) hot-load more — but only
from inside this directory: a name is one path component, and its resolved path
(symlinks followed) must stay inside the resolved root.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tuneship.adapters import adapter_chat_template, adapter_hash, check_adapter, locate_adapter
from tuneship.artifacts import ADAPTER_CONFIG, ADAPTER_WEIGHTS, CHAT_TEMPLATE, LINEAGE, atomic_dir
from tuneship.errors import ArtifactError
from tuneship.lineage import read_lineage

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, LINEAGE, CHAT_TEMPLATE)


@dataclass
class Entry:
    name: str
    path: Path
    sha256: str
    base_name: str | None
    base_sha256: str | None
    chat_template_sha256: str | None = None  # the template it was trained with (None: not recorded)


def confined(root: Path | str, name: str) -> Path:
    """``root/name`` if ``name`` is a plain adapter name that resolves inside ``root``; else refuse."""
    if not NAME.match(name or ""):
        raise ArtifactError(f"{name!r} is not an adapter name (letters, digits, '.', '_', '-'; no paths)")
    root_real = Path(os.path.realpath(root))
    path = Path(os.path.realpath(root_real / name))
    if path.parent != root_real:
        raise ArtifactError(f"{name!r} resolves to {path}, outside the registry {root_real}")
    if not path.is_dir():
        raise ArtifactError(f"no adapter {name!r} in the registry {root_real}")
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

    def add(self, name: str, source: Path | str, force: bool = False) -> Entry:
        """Copy a checked adapter (config, weights, lineage, chat template) in as ``name``.

        The template comes from the adapter directory, else from its run directory (older runs).
        """
        if not NAME.match(name):
            raise ArtifactError(f"{name!r} is not an adapter name (letters, digits, '.', '_', '-')")
        adapter = locate_adapter(source)
        report = check_adapter(adapter)
        if not report.ok:
            raise ArtifactError(f"{adapter} cannot be served as LoRA: " + "; ".join(report.problems))
        template = adapter_chat_template(adapter).file
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_dir(self.root / name, force=force) as tmp:
            for file in ADAPTER_FILES:
                if (adapter / file).is_file():
                    shutil.copyfile(adapter / file, tmp / file)
            if template is not None and not (tmp / CHAT_TEMPLATE).is_file():  # an older run's
                shutil.copyfile(template, tmp / CHAT_TEMPLATE)
        return next(e for e in self.entries() if e.name == name)
