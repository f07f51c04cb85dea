"""Merge a LoRA adapter into its base model and save safetensors, with proof of parity.

    tuneship export runs/tickets --out exports/tickets

locate adapter and base (from lineage) -> load base in fp32 + adapter (PEFT) -> their
logits on a fixed conversation -> merge -> round the weights to the saved dtype and compare their
logits (computed in fp32, as a reload would) -> save into a temporary directory (weights,
tokenizer with the run's chat template, generation config, model card) -> check that the
saved tensors are exactly the compared ones -> write parity.json and manifest.json -> rename
into place. Nothing is left at --out if any
step fails. An adapter trained with QLoRA is merged into the full-precision base, never
into 4-bit weights.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from tuneship.adapter_weights import read_shapes
from tuneship.adapters import WEIGHT_FILES, AdapterReport, check_adapter, locate_adapter
from tuneship.artifacts import (
    ADAPTER_CONFIG,
    MODEL_CARD,
    PARITY,
    RUN_CONFIG,
    atomic_dir,
    read_json,
    read_yaml,
    sha256_file,
)
from tuneship.chat import resolve_chat_template, run_chat_template, stop_token_ids
from tuneship.errors import ArtifactError
from tuneship.export.card import model_card
from tuneship.export.manifest import write_manifest
from tuneship.export.parity import (
    Dtype,
    Parity,
    check_saved_tensors,
    compare_logits,
    conversation_logits,
    round_weights,
    use_rounded,
)
from tuneship.lineage import Lineage, read_lineage, write_lineage
from tuneship.models import ResolvedBase, base_of_adapter, load_peft

log = logging.getLogger(__name__)

DTYPES: tuple[str, ...] = get_args(Dtype)


@dataclass
class ExportResult:
    """What a merged export produced: where, its parity check, and the base it was merged into."""

    out: Path
    parity: Parity
    base: ResolvedBase


def find_adapter(path: Path | str) -> Path:
    """The LoRA adapter in a run directory (adapter/) or an adapter directory, ready to merge."""
    adapter = locate_adapter(path)
    peft_type = read_json(adapter / ADAPTER_CONFIG).get("peft_type")
    if peft_type not in (None, "LORA"):
        raise ArtifactError(f"{adapter}: a {peft_type} adapter has no weights to merge (only LoRA/DoRA)")
    return adapter


def run_record(adapter: Path) -> dict | None:
    """The run that produced the adapter (``run.yaml`` beside it), if known."""
    run_file = adapter.parent / RUN_CONFIG
    return read_yaml(run_file) if run_file.is_file() else None


def _torch_dtype(name: str) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


@contextmanager
def collector_skips_older_objects() -> Iterator[None]:
    """Python's garbage collector leaves the objects that exist on entry (the imported libraries,
    ~500k on the default install) out of its collections until exit; unless something froze them
    already. Loading and merging create thousands of modules, which trigger full collections that
    would rescan them all: PEFT's injection took 0.61-0.73 s without this, 0.26-0.39 s with it and
    ``no_init_weights`` (default model, rank-16 all-linear adapter, 2 CPU threads)."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@collector_skips_older_objects()
def export_merged(
    source: Path | str,
    out: Path | str,
    base_spec: str | None = None,
    dtype: Dtype = "bf16",
    shard_size: str = "2GB",
    force: bool = False,
) -> ExportResult:
    """Merge the adapter at ``source`` into its base and write a checked model to ``out``.

    Raises ArtifactError for a bad dtype, an existing ``out`` (without ``force``), an adapter
    that cannot be merged or loaded, or a merged model that fails the parity check.
    """
    if dtype not in DTYPES:
        raise ArtifactError(f"dtype must be one of {', '.join(DTYPES)}")
    out = Path(out)
    if out.exists() and not force:
        raise ArtifactError(f"{out} already exists; pass --force to replace it")
    adapter = find_adapter(source)
    base = base_of_adapter(adapter, base_spec)
    adapter_lineage = read_lineage(adapter) or Lineage(kind="adapter")
    run = run_record(adapter)
    log.info("Merging %s into %s (fp32 weights), saving as %s", adapter, base.name, dtype)
    if adapter_lineage.method == "qlora":
        log.info(
            "The adapter was trained with QLoRA on a 4-bit base; it is merged into the base's "
            "full-precision weights (not into 4-bit weights, which would shift the outputs)."
        )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base.path)
    # The template the examples were trained with (tuneship.chat), saved with the tokenizer.
    if run is not None:
        run_chat_template(adapter.parent, tokenizer)
    else:
        resolve_chat_template(tokenizer)
    report = check_adapter(adapter, base=base.path)
    if report.broken:  # before loading: PyTorch's own message would be cut off and name no cause
        raise ArtifactError(f"{adapter}: cannot merge: " + "; ".join(report.broken))
    peft_model = load_peft(base, adapter, strict=False)  # keys checked next
    check_loaded_keys(peft_model, adapter, report)
    peft_model.eval()
    reference = conversation_logits(peft_model, tokenizer)
    merged = peft_model.merge_and_unload()
    rounded = round_weights(merged, _torch_dtype(dtype))  # the values the file will hold
    parity = check_merged(merged, tokenizer, reference, dtype)  # before anything is written
    use_rounded(merged, rounded)
    lineage = adapter_lineage.model_copy(
        update={
            "kind": "merged-model",
            "adapter": str(adapter.resolve()),
            "adapter_sha256": sha256_file(weights_file(adapter)),  # safetensors, else an older .bin
            "dtype": dtype,
        }
    )
    with atomic_dir(out, force=force) as tmp:
        save_merged(merged, tokenizer, base, tmp, shard_size)
        check_saved_tensors(merged, tmp)  # the file holds exactly the weights just checked
        (tmp / PARITY).write_text(parity.model_dump_json(indent=2) + "\n")
        write_lineage(tmp, lineage)
        model_card(out.name, lineage, run, parity).save(tmp / MODEL_CARD)
        write_manifest(tmp, lineage.model_dump(mode="json", exclude_none=True))
    return ExportResult(out, parity, base)


def weights_file(adapter: Path) -> Path:
    """The adapter's weights: safetensors, else an older PEFT ``.bin``."""
    return next(adapter / name for name in WEIGHT_FILES if (adapter / name).is_file())


def check_loaded_keys(peft_model: Any, adapter: Path, report: AdapterReport) -> None:
    """Every tensor the adapter's config asks for was in its weights file, and every tensor
    there was loaded; else PEFT keeps the untouched initial weights (B = 0) and the merge would
    write the base unchanged. Raises ArtifactError naming the missing and the unused keys, with
    what the adapter check found (``report``: e.g. a prefix that registering strips exactly)."""
    from peft.utils import get_peft_model_state_dict

    expected = set(get_peft_model_state_dict(peft_model))
    file = weights_file(adapter)
    saved = set(read_shapes(file))
    missing, unused = sorted(expected - saved), sorted(saved - expected)
    if not missing and not unused:
        return
    details = []
    if missing:
        details.append(
            f"missing adapter keys: {len(missing)} of the {len(expected)} tensors the config asks for "
            f"are not in {file.name} (e.g. {missing[0]})"
        )
    if unused:
        details.append(
            f"adapter keys that do not load: {len(unused)} tensor(s) in {file.name} match no adapted "
            f"module (e.g. {unused[0]})"
        )
    if report.fixes:
        todo = f"{'; '.join(report.fixes)}: register it (tuneship adapters add NAME PATH) and export that"
    elif report.problems:
        todo = f"the adapter check says: {'; '.join(report.problems)}"
    else:
        todo = "save the adapter again from the trained model (model.save_pretrained)"
    raise ArtifactError(f"{adapter}: {'; '.join(details)}; merging would write the base unchanged. {todo}")


def save_merged(merged: Any, tokenizer: Any, base: ResolvedBase, out: Path, shard_size: str) -> None:
    """The weights in their dtype (:func:`use_rounded` gave them the saved one), the tokenizer
    (with the run's template) and a generation config whose end-of-sequence ids include the
    template's end-of-turn token (the server stops on them).
    """
    from transformers import GenerationConfig

    merged.save_pretrained(out, max_shard_size=shard_size)
    tokenizer.save_pretrained(out)
    generation = (
        GenerationConfig.from_pretrained(base.path)
        if (base.path / "generation_config.json").is_file()
        else GenerationConfig()
    )
    # the base's end-of-sequence ids plus the template's end of turn, which a base may lack
    generation.eos_token_id = stop_token_ids(tokenizer, base.path, tokenizer.chat_template)
    generation.pad_token_id = tokenizer.pad_token_id
    generation.save_pretrained(out)


def check_merged(merged: Any, tokenizer: Any, reference: Any, dtype: Dtype) -> Parity:
    """Compare the merged weights, rounded to ``dtype`` (:func:`round_weights`) and computed in
    float32, with base + adapter (``reference``): what a float32 reload of the saved file gives.

    Raises ArtifactError when they do not match within ``dtype``'s limits.
    """
    parity = compare_logits(reference, conversation_logits(merged, tokenizer), dtype)
    if not parity.passed:
        raise ArtifactError(f"merged model does not match base + adapter: {parity.summary()}")
    return parity
