"""The adapter registry: a directory of immutable adapter versions and the aliases that name them.

    registry/
      tickets@1/  adapter_config.json  adapter_model.safetensors  tuneship.json (lineage)
                  chat_template.jinja (the template it was trained with)
      tickets@2/  ...
      ftjob-abc/  (a write-once entry: a service job's adapter, under its job id)
      aliases.json  {"tickets": "tickets@2"}   (replaced atomically)

``tuneship adapters add NAME RUN_OR_ADAPTER`` copies a checked adapter in (atomically) as the
next version ``NAME@N``, as safetensors (a ``.bin`` pickle is converted) and with a known wrapper
prefix stripped from its tensor names when that is exact (:func:`tuneship.adapters.check_adapter`
says so). A version's files are never rewritten and each version is served under its own name and
path, so vLLM's prefix cache (keyed by the adapter's id) and its reloads after an eviction can
never mix two versions. The alias ``NAME`` points at the first version until it is moved
(``promote``); a request for ``NAME`` is answered by the version it points at.
``tuneship serve --registry registry`` serves each alias's version and the plain entries and,
with an API key, lets ``tuneship adapters load NAME`` (or a first request for NAME) hot-load
more versions — but only
from inside this directory: a name is one path component, and its resolved path
(symlinks followed) must stay inside the resolved root.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
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
VERSION = re.compile(r"^(?P<alias>[A-Za-z0-9][A-Za-z0-9._-]{0,127})@(?P<number>[1-9][0-9]{0,8})$")
ALIASES = "aliases.json"
LOCK = ".lock"
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
    added: bool = True  # from ``add``: False when the latest version already had this content

    @property
    def alias(self) -> str | None:
        """The alias this is a version of (``tickets`` for ``tickets@2``); None for a plain entry."""
        match = VERSION.match(self.name)
        return match["alias"] if match else None

    @property
    def number(self) -> int | None:
        """The version number (2 for ``tickets@2``); None for a plain entry."""
        match = VERSION.match(self.name)
        return int(match["number"]) if match else None


def split_version(name: str) -> tuple[str, int | None]:
    """``("tickets", 2)`` for ``tickets@2``; ``(name, None)`` for any other name."""
    match = VERSION.match(name or "")
    return (match["alias"], int(match["number"])) if match else (name, None)


def confined(root: Path | str, name: str) -> Path:
    """``root/name`` if ``name`` is a plain adapter name that resolves inside ``root``; else refuse."""
    if not (NAME.match(name or "") or VERSION.match(name or "")):
        raise ArtifactError(
            f"{name!r} is not an adapter name (letters, digits, '.', '_', '-', @N for a version; no paths)"
        )
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
    """The registry at ``root``: versions (``NAME@N``), write-once plain entries, and aliases."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def entries(self) -> list[Entry]:
        """Every adapter directory, plain entries by name and versions by alias then number."""
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(self.root.iterdir(), key=lambda p: _order(p.name)):
            if path.name.startswith(".") or not (path / ADAPTER_CONFIG).is_file():
                continue
            found.append(self._entry(path))
        return found

    def _entry(self, path: Path) -> Entry:
        lineage = read_lineage(path)
        base = lineage.base_model if lineage else None
        return Entry(
            path.name,
            path,
            adapter_hash(path),
            base.name if base else None,
            base.weights_sha256 if base else None,
            _template_sha256(path),
        )

    def served(self) -> list[Entry]:
        """What a server serves from its start: each alias's current version and every plain entry
        (other versions are loaded on their first request, with hot loading on)."""
        current = set(self.aliases().values())
        return [e for e in self.entries() if e.alias is None or e.name in current]

    def path(self, name: str) -> Path:
        """The directory of entry or version ``name`` (an alias: of the version it points at)."""
        return confined(self.root, self.resolve(name))

    def versions(self, alias: str) -> list[Entry]:
        """The versions of ``alias``, oldest first."""
        return [e for e in self.entries() if e.alias == alias]

    def aliases(self) -> dict[str, str]:
        """Alias -> the version it points at (``{"tickets": "tickets@2"}``)."""
        file = self.root / ALIASES
        if not file.is_file():
            return {}
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError) as e:
            raise ArtifactError(f"{file}: not readable as JSON ({e}); restore it from the versions") from e
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def resolve(self, name: str) -> str:
        """The served name for ``name``: an alias's version; a version or plain entry itself."""
        return self.aliases().get(name, name)

    def set_alias(self, alias: str, version: str) -> str | None:
        """Point ``alias`` at ``version`` (one of its own versions); returns where it pointed before.

        Raises ArtifactError for a version of another alias, AdapterNotFoundError for a missing one.
        """
        if split_version(version)[0] != alias or split_version(version)[1] is None:
            raise ArtifactError(f"{version!r} is not a version of {alias!r} (versions are named {alias}@N)")
        confined(self.root, version)
        with self._locked():
            aliases = self.aliases()
            before = aliases.get(alias)
            aliases[alias] = version
            self._write_aliases(aliases)
        return before

    def add(self, name: str, source: Path | str, base: Path | str | None = None) -> Entry:
        """Copy a checked adapter (config, weights, lineage, chat template) in as version ``name@N``.

        N is one more than the newest version of ``name``; when that newest version has the same
        content, no version is added (``added`` is False). The alias ``name`` is created pointing at
        the first version; later versions leave it (:meth:`set_alias` moves it, and the service's
        ``adapters promote`` / ``rollout promote`` record who and why).
        The weights are written as safetensors, with the exact repairs the check names (a ``.bin``
        converted, a wrapper's prefix stripped). The template comes from the adapter directory, else
        from its run directory (older runs). The tensors are checked against ``base`` (a model
        directory), else the base the adapter's lineage names. Raises AdapterRefusedError with every
        reason when vLLM could not serve it, or when ``name`` is its base model's name (the name the
        base is served under); ArtifactError when ``name`` is not a name, is a version (``@N``: the
        registry numbers them), or is a plain entry already (one written with :meth:`put`).
        """
        if VERSION.match(name):
            raise ArtifactError(
                f"{name!r}: versions are numbered by the registry; add under {split_version(name)[0]!r}"
            )
        adapter, report, template = self._checked(name, source, base)
        if (self.root / name / ADAPTER_CONFIG).is_file():
            raise ArtifactError(
                f"{name!r} is a plain entry of the registry {self.root} (written once, not versioned); "
                "add the adapter under another name"
            )
        with self._locked():
            versions = self.versions(name)
            newest = versions[-1] if versions else None
            if newest is not None and newest.sha256 == _content_hash(adapter, report):
                entry, added = newest, False
            else:
                number = (newest.number or 0) + 1 if newest else 1
                entry, added = self._copy(f"{name}@{number}", adapter, report, template), True
                if newest is not None and entry.sha256 == newest.sha256:  # the same, once repaired
                    shutil.rmtree(entry.path)
                    entry, added = newest, False
            aliases = self.aliases()
            if name not in aliases:
                aliases[name] = entry.name
                self._write_aliases(aliases)
        entry.report, entry.added = report, added
        return entry

    def put(self, name: str, source: Path | str, base: Path | str | None = None) -> Entry:
        """Copy a checked adapter in once as the plain entry ``name`` (a service job's, by job id).

        Putting the same content again is a no-op; other content under a taken name is refused
        (ArtifactError): an entry's files are never rewritten. Other errors as :meth:`add`.
        """
        if not NAME.match(name):
            raise ArtifactError(f"{name!r} is not an adapter name (letters, digits, '.', '_', '-')")
        adapter, report, template = self._checked(name, source, base)
        with self._locked():
            if name in self.aliases():
                raise ArtifactError(f"{name!r} is an alias in the registry {self.root}; pick another name")
            if (self.root / name).exists():
                entry = self._entry(confined(self.root, name))
                if entry.sha256 != _content_hash(adapter, report):
                    raise ArtifactError(f"{name!r} is in the registry {self.root} with other content")
                entry.added = False
            else:
                entry = self._copy(name, adapter, report, template)
        entry.report = report
        return entry

    def _checked(
        self, name: str, source: Path | str, base: Path | str | None
    ) -> tuple[Path, AdapterReport, Path | None]:
        adapter = locate_adapter(source)
        report = check_adapter(adapter, base=base)
        if report.problems:
            raise AdapterRefusedError(f"{adapter} cannot be served as LoRA: " + "; ".join(report.problems))
        if report.base_name and name == report.base_name:
            raise AdapterRefusedError(
                f"{name!r} is the name of the adapter's base model, which a server serves under that "
                "name: vLLM cannot serve two models of one name; pick another adapter name"
            )
        return adapter, report, adapter_chat_template(adapter).file

    def _copy(self, name: str, adapter: Path, report: AdapterReport, template: Path | None) -> Entry:
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_dir(self.root / name) as tmp:
            for file in ADAPTER_FILES:
                if (adapter / file).is_file():
                    shutil.copyfile(adapter / file, tmp / file)
            _copy_weights(adapter, tmp / ADAPTER_WEIGHTS, report)
            if template is not None and not (tmp / CHAT_TEMPLATE).is_file():  # an older run's
                shutil.copyfile(template, tmp / CHAT_TEMPLATE)
        return self._entry(self.root / name)

    def _write_aliases(self, aliases: dict[str, str]) -> None:
        tmp = self.root / f".{ALIASES}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(dict(sorted(aliases.items())), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / ALIASES)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time (numbering versions, rewriting aliases.json), across processes."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _order(name: str) -> tuple[str, int]:
    alias, number = split_version(name)
    return (alias, number or 0)


def _content_hash(adapter: Path, report: AdapterReport) -> str | None:
    """The hash the adapter will have in the registry, when copying keeps its files as they are."""
    if report.renames or not (adapter / ADAPTER_WEIGHTS).is_file():
        return None  # repaired on copy: compared after the copy would be needed; treat as new
    return adapter_hash(adapter)


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
