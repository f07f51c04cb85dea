"""Packed or padded batches: the choice ``--packing auto`` makes, and the padding it leaves."""

from __future__ import annotations

import random
from typing import Any

from tuneship.train.config import TrainConfig

# Padding share below which padded batches beat packing on CPU: packed rows need a
# block-diagonal attention mask, which cost ~30% per token with sdpa on 2 cores
# (bench/train_throughput.py); on CUDA, padding-free batches are nearly free.
PACKING_THRESHOLD = 0.25


def expected_padding(lengths: list[int], batch_size: int, seed: int = 0) -> float:
    """Padding share of randomly drawn padded batches of these example lengths."""
    shuffled = lengths[:]
    random.Random(seed).shuffle(shuffled)
    padded = real = 0
    for i in range(0, len(shuffled), batch_size):
        batch = shuffled[i : i + batch_size]
        padded += max(batch) * len(batch)
        real += sum(batch)
    return 1 - real / max(1, padded)


def use_packing(config: TrainConfig, lengths: list[int]) -> bool:
    """Pack when asked, or (auto) when padding would waste more than packing costs."""
    if config.method == "prompt-tuning" or config.packing == "never":
        return False  # prompt tuning prepends virtual tokens, which packed position ids cannot describe
    if config.packing == "always":
        return True
    import torch

    return (
        torch.cuda.is_available()
        or expected_padding(lengths, config.batch_size, config.seed) > PACKING_THRESHOLD
    )


def padding_fraction(trainer: Any, packing: bool) -> float:
    """Share of batch positions that are padding (0 when packed: padding-free batches)."""
    if packing:
        return 0.0
    real = total = 0
    for batch in trainer.get_train_dataloader():
        total += batch["input_ids"].numel()
        real += (
            int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        )
    return 1 - real / max(1, total)
