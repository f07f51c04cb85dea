"""Artifact names, content hashes, JSON/YAML files and atomic directory writes.

Every stage writes its artifact into a temporary sibling directory and renames it
into place only when it is complete, so an interrupted command never leaves a
half-written artifact where a good one is expected.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tuneship.errors import ArtifactError

# Artifact file names, defined once.
RUN_CONFIG = "run.yaml"
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"  # full fine-tuning writes a whole model instead of an adapter
CHAT_TEMPLATE = "chat_template.jinja"
LOSS_PLOT = "loss.png"
METRICS = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
MANIFEST = "manifest.json"
PARITY = "parity.json"
MODEL_CARD = "README.md"  # an export's model card (Hub front matter + markdown)
TRAIN_LOG = "train.log"  # library warnings and messages of a training run
LINEAGE = "tuneship.json"  # lineage record placed inside model/adapter directories
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

_LIBRARIES = ("torch", "transformers", "peft", "trl", "vllm", "tuneship")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def hash_dir(path: Path, pattern: str = "*") -> str:
    """One hash over the names and contents of the files in a directory (sorted)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob(pattern) if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def model_weights_hash(model_dir: Path) -> str:
    """Content hash of a model directory's weights (safetensors files)."""
    return hash_dir(Path(model_dir), "*.safetensors")


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        for dist in (name, f"{name}-cpu"):
            try:
                versions[name] = version(dist)
                break
            except PackageNotFoundError:
                continue
    return versions


def write_json(path: Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise ArtifactError(f"{path}: file not found") from e
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from e


def write_yaml(path: Path, data: Any) -> None:
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as e:
        raise ArtifactError(f"{path}: file not found") from e
    except yaml.YAMLError as e:
        raise ArtifactError(f"{path}: not valid YAML ({e})") from e


def _readable_as_umask_allows(root: Path) -> None:
    """Libraries write some files 0600 (through temporary files); an artifact is meant to be
    shared — served from a container, copied to a registry — so give it the usual modes."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_dir(target: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``target`` only if the block succeeds."""
    target = Path(target)
    if target.exists() and not force:
        raise ArtifactError(f"{target} already exists; pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{int(time.time())}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _readable_as_umask_allows(tmp)
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(target)
