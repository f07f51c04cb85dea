"""Merge a LoRA adapter into its base model and save safetensors, with proof of parity.

    tuneship export runs/tickets --out exports/tickets

locate adapter and base (from lineage) -> load base in fp32 -> merge -> save into a
temporary directory (weights, tokenizer with the run's chat template, generation
config, model card) -> reload and compare with base + adapter (PEFT) -> write
parity.json and manifest.json -> rename into place. Nothing is left at --out if any
step fails. An adapter trained with QLoRA is merged into the full-precision base, never
into 4-bit weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneship.adapters import locate_adapter
from tuneship.artifacts import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    PARITY,
    RUN_CONFIG,
    atomic_dir,
    read_json,
    read_yaml,
    sha256_file,
    write_json,
)
from tuneship.chat import end_of_sequence_ids, resolve_chat_template, run_chat_template
from tuneship.errors import ArtifactError
from tuneship.export.card import model_card
from tuneship.export.manifest import write_manifest
from tuneship.lineage import Lineage, read_lineage, write_lineage
from tuneship.models import ResolvedBase, base_of_adapter, load_peft

DTYPES = ("bf16", "fp16", "fp32")
# Worst-case |logit difference| accepted between the saved merged model and PEFT's
# base + adapter in fp32. Rounding the merged weights to 16 bits moves logits of this
# 135M model by ~0.1-0.3 (measured); 1.0 leaves room yet catches a wrong merge
# (a skipped or doubled adapter moves them by several units).
TOLERANCE = {"fp32": 1e-3, "bf16": 1.0, "fp16": 0.5}
MIN_AGREEMENT = {"fp32": 1.0, "bf16": 0.9, "fp16": 0.95}
PARITY_PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "My order has not arrived and I am upset.",
    "def fibonacci(n):",
    "Translate to German: good morning",
    "List three primary colours:",
    "URGENT: the router keeps crashing after the update",
    "Summarise: the meeting moved to Tuesday at 3pm.",
]


@dataclass
class ExportResult:
    out: Path
    parity: dict
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


def last_logits(model: Any, tokenizer: Any, prompts: list[str]) -> Any:
    """Logits at every position of each chat-rendered prompt (fp32, no grad)."""
    import torch

    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}],
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            )["input_ids"]
            out.append(model(input_ids=ids).logits[0].float())
    return out


def compare_logits(reference: list[Any], candidate: list[Any]) -> dict:
    import torch

    max_diff = max(float((r - c).abs().max()) for r, c in zip(reference, candidate, strict=True))
    agree = torch.cat(
        [(r.argmax(-1) == c.argmax(-1)).float() for r, c in zip(reference, candidate, strict=True)]
    )
    return {
        "max_abs_logit_diff": round(max_diff, 6),
        "greedy_agreement": round(float(agree.mean()), 4),
        "positions": int(agree.numel()),
        "prompts": len(reference),
    }


def export_merged(
    source: Path | str,
    out: Path | str,
    base_spec: str | None = None,
    dtype: str = "bf16",
    shard_size: str = "2GB",
    force: bool = False,
) -> ExportResult:
    """Merge the adapter at ``source`` into its base and write a checked model to ``out``."""
    if dtype not in DTYPES:
        raise ArtifactError(f"dtype must be one of {', '.join(DTYPES)}")
    out = Path(out)
    if out.exists() and not force:
        raise ArtifactError(f"{out} already exists; pass --force to replace it")
    adapter = find_adapter(source)
    base = base_of_adapter(adapter, base_spec)
    adapter_lineage = read_lineage(adapter) or Lineage(kind="adapter")
    run = run_record(adapter)
    print(f"Merging {adapter} into {base.name} (fp32 weights), saving as {dtype}")
    if adapter_lineage.method == "qlora":
        print(
            "The adapter was trained with QLoRA on a 4-bit base; it is merged into the base's "
            "full-precision weights (not into 4-bit weights, which would shift the outputs)."
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(base.path)
    # The template the examples were trained with (tuneship.chat), saved with the tokenizer.
    if run is not None:
        run_chat_template(adapter.parent, tokenizer)
    else:
        resolve_chat_template(tokenizer)
    peft_model = load_peft(base, adapter)
    peft_model.eval()
    reference = last_logits(peft_model, tokenizer, PARITY_PROMPTS)
    merged = peft_model.merge_and_unload()
    with atomic_dir(out, force=force) as tmp:
        merged.to(_torch_dtype(dtype)).save_pretrained(tmp, max_shard_size=shard_size)
        tokenizer.save_pretrained(tmp)
        generation = (
            GenerationConfig.from_pretrained(base.path)
            if (base.path / "generation_config.json").is_file()
            else GenerationConfig()
        )
        # The server stops on these ids; make sure the tokenizer's end-of-turn token is among them.
        generation.eos_token_id = end_of_sequence_ids(tokenizer, base.path)
        generation.pad_token_id = tokenizer.pad_token_id
        generation.save_pretrained(tmp)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        parity = compare_logits(reference, last_logits(reloaded, tokenizer, PARITY_PROMPTS))
        parity.update(dtype=dtype, tolerance=TOLERANCE[dtype], min_agreement=MIN_AGREEMENT[dtype])
        parity["passed"] = (
            parity["max_abs_logit_diff"] <= TOLERANCE[dtype]
            and parity["greedy_agreement"] >= MIN_AGREEMENT[dtype]
        )
        if not parity["passed"]:
            raise ArtifactError(f"merged model does not match base + adapter: {parity}")
        write_json(tmp / PARITY, parity)
        lineage = adapter_lineage.model_copy(
            update={
                "kind": "merged-model",
                "adapter": str(adapter.resolve()),
                "adapter_sha256": sha256_file(adapter / ADAPTER_WEIGHTS),
                "dtype": dtype,
            }
        )
        write_lineage(tmp, lineage)
        record = lineage.model_dump(mode="json", exclude_none=True)
        (tmp / "README.md").write_text(model_card(out.name, record, run, parity))
        write_manifest(tmp, record)
    return ExportResult(out, parity, base)
