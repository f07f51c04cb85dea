"""Proof that a merged export computes what base + adapter computes: ``parity.json``.

The merged weights, reloaded from disk, are run on fixed chat prompts next to PEFT's base +
adapter in fp32; the worst logit difference and the share of positions with the same greedy
token must stay within the saved dtype's tolerance. ``parity.json`` is ``model_dump_json()``
of :class:`Parity`; its JSON Schema is published in ``export/schemas/parity.schema.json`` and a
test keeps the two equal. Regenerate the schema after a change with::

    python -m tuneship.export.parity
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from tuneship.artifacts import PARITY, read_json
from tuneship.errors import ArtifactError

Dtype = Literal["bf16", "fp16", "fp32"]
SCHEMA = Path(__file__).parent / "schemas" / "parity.schema.json"
# Worst-case |logit difference| accepted between the saved merged model and PEFT's
# base + adapter in fp32. Rounding the merged weights to 16 bits moves logits of this
# 135M model by ~0.1-0.3 (measured); 1.0 leaves room yet catches a wrong merge
# (a skipped or doubled adapter moves them by several units).
TOLERANCE: dict[str, float] = {"fp32": 1e-3, "bf16": 1.0, "fp16": 0.5}
MIN_AGREEMENT: dict[str, float] = {"fp32": 1.0, "bf16": 0.9, "fp16": 0.95}
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


class Parity(BaseModel):
    """Merged model against PEFT's base + adapter on :data:`PARITY_PROMPTS` (``parity.json``)."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    prompts: int
    """Chat-rendered prompts compared."""
    positions: int
    """Token positions compared over all prompts."""
    max_abs_logit_diff: float
    """Largest |logit difference| at any position and vocabulary entry (fp32 logits)."""
    greedy_agreement: float
    """Share of positions (0-1) where both pick the same most likely next token."""
    dtype: Dtype
    """dtype of the saved merged weights."""
    tolerance: float
    """Largest ``max_abs_logit_diff`` accepted for this dtype."""
    min_agreement: float
    """Smallest ``greedy_agreement`` accepted for this dtype."""
    passed: bool
    """Both limits held."""

    def summary(self) -> str:
        """One line for people: the numbers that decide."""
        return (
            f"max |logit diff| {self.max_abs_logit_diff:.4f}, greedy agreement "
            f"{self.greedy_agreement:.1%} over {self.positions} positions"
        )


def last_logits(model: Any, tokenizer: Any, prompts: list[str]) -> list[Any]:
    """Logits (fp32, no grad) at every position of each chat-rendered prompt: one (tokens, vocab) each.

    All prompts go through the model in one right-padded batch (one forward pass: on a CPU that
    is several times faster than one pass per prompt); under the causal mask the padding after a
    prompt cannot change its positions, so each prompt's rows are what it alone would give
    (to float rounding, far below the fp32 tolerance).
    """
    import torch

    rows = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=False
        )
        for prompt in prompts
    ]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
    return [logits[i, : len(r)] for i, r in enumerate(rows)]


def compare_logits(reference: list[Any], candidate: list[Any], dtype: Dtype) -> Parity:
    """Compare two models' logits prompt by prompt and judge them against ``dtype``'s limits."""
    import torch

    max_diff = max(float((r - c).abs().max()) for r, c in zip(reference, candidate, strict=True))
    agree = torch.cat(
        [(r.argmax(-1) == c.argmax(-1)).float() for r, c in zip(reference, candidate, strict=True)]
    )
    max_diff, agreement = round(max_diff, 6), round(float(agree.mean()), 4)
    return Parity(
        prompts=len(reference),
        positions=int(agree.numel()),
        max_abs_logit_diff=max_diff,
        greedy_agreement=agreement,
        dtype=dtype,
        tolerance=TOLERANCE[dtype],
        min_agreement=MIN_AGREEMENT[dtype],
        passed=max_diff <= TOLERANCE[dtype] and agreement >= MIN_AGREEMENT[dtype],
    )


def read_parity(directory: Path | str) -> Parity:
    """The ``parity.json`` of an export; raises ArtifactError when it is missing or not valid."""
    path = Path(directory) / PARITY
    if not path.is_file():
        raise ArtifactError(f"{path}: no parity record; is this a merged tuneship export?")
    try:
        return Parity.model_validate(read_json(path))
    except ValueError as e:
        raise ArtifactError(f"{path}: not a valid parity record ({e})") from None


def json_schema() -> dict:
    """The published JSON Schema of ``parity.json``."""
    return Parity.model_json_schema(mode="serialization")


if __name__ == "__main__":
    SCHEMA.write_text(json.dumps(json_schema(), indent=2) + "\n")
    print(f"wrote {SCHEMA}")
