"""Merge a LoRA adapter into its base and write one GGUF file for llama.cpp and Ollama, checked.

    tuneship export runs/tickets --format gguf --quant q8_0 --out exports/tickets-gguf

locate adapter and base (lineage) -> load base + adapter in fp32 -> reference logits and greedy
continuations -> merge -> write ``NAME.gguf`` (weights, tokenizer, the run's chat template, the
end-of-turn token as ``eot_token_id``) and an Ollama ``Modelfile`` into a temporary directory ->
reload the file with transformers' GGUF loader and compare (:mod:`tuneship.export.gguf_parity`)
-> ``parity.json``, ``tuneship.json``, ``manifest.json`` -> rename into place. A failed check leaves
nothing at ``--out``. A LoRA-only GGUF (llama.cpp's ``--lora``) is not written: export the PEFT
adapter with ``--adapter-only``, or a merged GGUF.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneship.artifacts import MANIFEST, PARITY, atomic_dir, read_json, sha256_file
from tuneship.chat import end_of_turn_id, resolve_chat_template, run_chat_template, stop_token_ids
from tuneship.errors import ArtifactError
from tuneship.export.gguf_file import Quant, check_supported, write_gguf
from tuneship.export.gguf_parity import GgufParity, check_gguf, load_gguf, prompt_ids, run_model
from tuneship.export.manifest import Verification, verify_export, write_manifest
from tuneship.export.merge import check_loaded_keys, find_adapter, run_record, weights_file
from tuneship.export.modelfile import MODELFILE, modelfile
from tuneship.lineage import Lineage, read_lineage, write_lineage
from tuneship.models import ResolvedBase, base_of_adapter, load_peft

log = logging.getLogger(__name__)


@dataclass
class GgufResult:
    """What a GGUF export produced: the directory, the file in it, its check and the base."""

    out: Path
    file: Path
    parity: GgufParity
    base: ResolvedBase


def gguf_name(out: Path, quant: str) -> str:
    """The file's name inside the export: ``{out name}-{quant}.gguf``."""
    return f"{out.name}-{quant}.gguf"


def export_gguf(
    source: Path | str,
    out: Path | str,
    base_spec: str | None = None,
    quant: Quant = "f16",
    force: bool = False,
) -> GgufResult:
    """Merge the adapter at ``source`` into its base and write a checked GGUF export to ``out``.

    Raises ArtifactError for an unsupported architecture or type, an existing ``out`` (without
    ``force``), an adapter that cannot be merged, or a file that fails the independent check.
    """
    out = Path(out)
    if out.exists() and not force:
        raise ArtifactError(f"{out} already exists; pass --force to replace it")
    adapter = find_adapter(source)
    base = base_of_adapter(adapter, base_spec)
    from transformers import AutoConfig, AutoTokenizer

    check_supported(AutoConfig.from_pretrained(base.path), quant)  # before any weights load
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    run = run_record(adapter)
    template = run_chat_template(adapter.parent, tokenizer) if run else resolve_chat_template(tokenizer)
    peft_model = _load_reference(base, adapter)
    stops = stop_token_ids(tokenizer, base.path, template)
    ids = prompt_ids(tokenizer)
    log.info("Reference: base + adapter (PEFT, fp32) on %d prompts", len(ids))
    reference = run_model(peft_model, ids, stops)
    merged = peft_model.merge_and_unload()
    lineage = (read_lineage(adapter) or Lineage(kind="adapter")).model_copy(
        update={
            "kind": "merged-model",
            "adapter": str(adapter.resolve()),
            "adapter_sha256": sha256_file(weights_file(adapter)),
            "dtype": quant,
            "format": "gguf",
        }
    )
    name = gguf_name(out, quant)
    with atomic_dir(out, force=force) as tmp:
        log.info("Writing %s (%s)", name, quant)
        write_gguf(
            merged, tokenizer, tmp / name, quant, template, end_of_turn_id(tokenizer, template), out.name
        )
        (tmp / MODELFILE).write_text(modelfile(name, tokenizer, template, stops, lineage))
        log.info("Reloading %s with transformers' GGUF loader and comparing", name)
        parity = check_gguf(tmp, name, ids, reference, stops, quant)
        if not parity.passed:
            raise ArtifactError(f"the GGUF file does not match base + adapter: {parity.summary()}")
        (tmp / PARITY).write_text(parity.model_dump_json(indent=2) + "\n")
        write_lineage(tmp, lineage)
        write_manifest(tmp, lineage.model_dump(mode="json", exclude_none=True))
    return GgufResult(out, out / name, parity, base)


def _load_reference(base: ResolvedBase, adapter: Path) -> Any:
    from tuneship.adapters import check_adapter

    report = check_adapter(adapter, base=base.path)
    if report.broken:
        raise ArtifactError(f"{adapter}: cannot merge: " + "; ".join(report.broken))
    peft_model = load_peft(base, adapter, strict=False)  # keys checked next
    check_loaded_keys(peft_model, adapter, report)
    return peft_model.eval()


def gguf_files(directory: Path | str) -> list[str]:
    """The GGUF files an export's manifest lists (empty for a safetensors export)."""
    manifest = Path(directory) / MANIFEST
    if not manifest.is_file():
        return []
    return sorted(n for n in read_json(manifest).get("files", {}) if n.endswith(".gguf"))


def verify_gguf_export(directory: Path | str, load: bool = True) -> Verification:
    """Every file against the manifest, then (``load``) the GGUF file through transformers' loader."""
    directory = Path(directory)
    result = verify_export(directory, load=False)
    if load and not (result.changed or result.missing):
        for name in gguf_files(directory):
            try:
                load_gguf(directory, name)
            except Exception as e:  # the reader raises many kinds; the message is what matters
                text = str(e).strip()
                result.load_error = f"{name}: {text.splitlines()[0][:300] if text else type(e).__name__}"
                break
    return result
