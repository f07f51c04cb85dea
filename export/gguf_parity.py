"""The independent check of a GGUF export: ``parity.json`` of a ``--format gguf`` export.

The file is read back by transformers' GGUF loader (``from_pretrained(dir, gguf_file=name)``: its
own reader, dequantizer and llama q/k un-permutation, not the writer's code), model and tokenizer.
The reloaded tokenizer must render the fixed prompts (:data:`PARITY_PROMPTS`) with the file's chat
template to the same token ids as the run's tokenizer; then next-token logits at every position and
greedy continuations are compared with PEFT's base + adapter in fp32.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from tuneship.export.gguf_file import Quant

# Rendered one at a time, each with a greedy continuation (the merged export's check uses one
# conversation instead: export/parity.py).
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

# Limits per GGUF type, from measurement (2026-12-01, 2 CPU threads): SmolLM2-135M + an all-linear
# LoRA adapter with random non-zero weights (alpha 2r: a far larger change than a trained adapter
# makes, so the merged weights quantize worse), reloaded through transformers, against PEFT in
# fp32; 8 prompts, 306 positions. max |logit diff|, next-token agreement, continuations:
#   f16   rank 8: 0.073, 100%, 100%    rank 16 (bench/export_time.py): 0.087, 100%, 90.6%
#   bf16  rank 8: 0.585, 100%, 98.4%   rank 16: 0.759, 99.7%, 80.5%
#   q8_0  rank 8: 1.518, 98.0%, 84.8%  rank 16: 3.994, 90.2%, 53.9%
# The trained tiny test run: f16 0.002, q8_0 0.050, both 100%. The limits leave 1.5-3x room on the
# logits; the agreement limits are what a wrong layout fails (q/k rows left unpermuted: 40% next-token
# agreement, 5% continuations). Greedy continuations drift apart after a near-tie: the lowest bar.
TOLERANCE: dict[str, float] = {"f16": 0.25, "bf16": 1.5, "q8_0": 6.0}
MIN_AGREEMENT: dict[str, float] = {"f16": 0.97, "bf16": 0.95, "q8_0": 0.85}
# Greedy continuations: share of generated tokens before the first difference, averaged.
MIN_CONTINUATION: dict[str, float] = {"f16": 0.75, "bf16": 0.6, "q8_0": 0.4}
NEW_TOKENS = 16


class GgufParity(BaseModel):
    """A GGUF export reloaded by transformers against PEFT's base + adapter (``parity.json``)."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    format: str = "gguf"
    """What was checked."""
    quant: Quant
    """Type of the file's 2-D weights."""
    prompts: int
    """Chat-rendered prompts compared."""
    prompt_ids_match: bool
    """The file's tokenizer and chat template render every prompt to the run's token ids."""
    positions: int
    """Token positions compared over all prompts."""
    max_abs_logit_diff: float
    """Largest |logit difference| at any position and vocabulary entry (fp32 logits)."""
    greedy_agreement: float
    """Share of positions (0-1) where both pick the same most likely next token."""
    continuation_agreement: float
    """Mean share of each greedy continuation (NEW_TOKENS tokens) before the first difference."""
    tolerance: float
    """Largest ``max_abs_logit_diff`` accepted for this type."""
    min_agreement: float
    """Smallest ``greedy_agreement`` accepted for this type."""
    min_continuation: float
    """Smallest ``continuation_agreement`` accepted for this type."""
    passed: bool
    """Every limit held."""

    def summary(self) -> str:
        """One line for people: the numbers that decide."""
        ids = "" if self.prompt_ids_match else "prompt token ids differ; "
        return (
            f"{ids}max |logit diff| {self.max_abs_logit_diff:.4f}, greedy agreement "
            f"{self.greedy_agreement:.1%} over {self.positions} positions, continuations "
            f"{self.continuation_agreement:.1%} ({self.quant})"
        )


def prompt_ids(tokenizer: Any) -> list[Any]:
    """The parity prompts rendered with ``tokenizer``'s chat template: one (1, tokens) tensor each."""
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"]
        for p in PARITY_PROMPTS
    ]


def run_model(model: Any, ids: list[Any], stop: list[int]) -> tuple[list[Any], list[list[int]]]:
    """fp32 logits at every position, and the greedy continuation, of each prompt."""
    import torch

    logits, continuations = [], []
    with torch.no_grad():
        for prompt in ids:
            logits.append(model(input_ids=prompt).logits[0].float())
            out = model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                eos_token_id=stop or None,
                pad_token_id=stop[0] if stop else 0,
            )
            continuations.append(out[0, prompt.shape[1] :].tolist())
    return logits, continuations


def _common_share(a: list[int], b: list[int]) -> float:
    same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return 1.0 if a == b else same / max(len(a), len(b), 1)


def load_gguf(directory: Path, name: str) -> tuple[Any, Any]:
    """Model (fp32) and tokenizer from a GGUF file, through transformers' own GGUF loader."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers' GGUF conversion draws a bare tqdm bar
    with contextlib.redirect_stderr(io.StringIO()):
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    return model.eval(), tokenizer


def check_gguf(directory: Path, name: str, ids: list[Any], reference: tuple, stop: list[int], quant: Quant):
    """Reload ``directory/name`` and judge it against ``reference`` (:func:`run_model` of base + adapter)."""
    import torch

    model, tokenizer = load_gguf(directory, name)
    ids_match = all(torch.equal(a, b) for a, b in zip(ids, prompt_ids(tokenizer), strict=True))
    logits, continuations = run_model(model, ids, stop)
    ref_logits, ref_continuations = reference
    max_diff = max(float((r - c).abs().max()) for r, c in zip(ref_logits, logits, strict=True))
    agree = torch.cat(
        [(r.argmax(-1) == c.argmax(-1)).float() for r, c in zip(ref_logits, logits, strict=True)]
    )
    shares = [_common_share(a, b) for a, b in zip(ref_continuations, continuations, strict=True)]
    max_diff, agreement = round(max_diff, 6), round(float(agree.mean()), 4)
    continuation = round(sum(shares) / len(shares), 4)
    return GgufParity(
        quant=quant,
        prompts=len(ids),
        prompt_ids_match=ids_match,
        positions=int(agree.numel()),
        max_abs_logit_diff=max_diff,
        greedy_agreement=agreement,
        continuation_agreement=continuation,
        tolerance=TOLERANCE[quant],
        min_agreement=MIN_AGREEMENT[quant],
        min_continuation=MIN_CONTINUATION[quant],
        passed=ids_match
        and max_diff <= TOLERANCE[quant]
        and agreement >= MIN_AGREEMENT[quant]
        and continuation >= MIN_CONTINUATION[quant],
    )
