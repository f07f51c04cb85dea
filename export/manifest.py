"""``manifest.json`` for an export: the sha256 of every file, and a check that nothing changed.

    tuneship export verify exports/tickets

re-hashes every file listed in the manifest, names any that changed, went missing or
appeared, and loads the model and tokenizer with transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tuneship.artifacts import MANIFEST, library_versions, read_json, sha256_file, write_json
from tuneship.errors import ArtifactError


def file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file below ``directory`` (the manifest itself excluded), by relative path."""
    return {
        str(p.relative_to(directory)): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def write_manifest(directory: Path, lineage: dict) -> None:
    write_json(
        directory / MANIFEST,
        {"files": file_hashes(directory), "lineage": lineage, "versions": library_versions()},
    )


@dataclass
class Verification:
    directory: Path
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    load_error: str | None = None
    files: int = 0

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.added or self.load_error)

    def problems(self) -> list[str]:
        return (
            [f"changed: {name}" for name in self.changed]
            + [f"missing: {name}" for name in self.missing]
            + [f"not in the manifest: {name}" for name in self.added]
            + ([f"does not load: {self.load_error}"] if self.load_error else [])
        )


def verify_export(directory: Path | str, load: bool = True) -> Verification:
    """Compare every file with the manifest, then (``load``) load model and tokenizer."""
    directory = Path(directory)
    if not (directory / MANIFEST).is_file():
        raise ArtifactError(f"{directory}: no {MANIFEST}; is this a tuneship export?")
    expected = read_json(directory / MANIFEST).get("files", {})
    actual = file_hashes(directory)
    result = Verification(directory, files=len(expected))
    result.missing = sorted(set(expected) - set(actual))
    result.added = sorted(set(actual) - set(expected))
    result.changed = sorted(n for n in set(expected) & set(actual) if expected[n] != actual[n])
    if load and not (result.changed or result.missing):
        result.load_error = _load_problem(directory)
    return result


def _load_problem(directory: Path) -> str | None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(directory)
        AutoModelForCausalLM.from_pretrained(directory)
    except Exception as e:  # transformers raises many kinds; the message is what matters
        return str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    return None
