"""SFTTrainer with a loss computed only where it counts.

With loss on assistant turns, most positions carry no loss (80% in the ticket example),
yet the stock loss projects every position onto the whole vocabulary. Here the model
is asked for logits only at positions whose next token is trained (``logits_to_keep``
with the union of those positions over the batch), which saves most of the LM-head
work and memory. The loss is the same token-averaged cross-entropy.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from trl import SFTTrainer

from tuneship.train.render import IGNORE


class SparseLossSFTTrainer(SFTTrainer):  # type: ignore[misc]
    def __init__(self, *args: Any, sparse_loss: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sparse_loss = sparse_loss

    def compute_loss(
        self, model: Any, inputs: dict, return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        if not self.sparse_loss or return_outputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # No KV cache in training: with one, transformers skips the packed-sequence check and
        # packed examples would attend to each other (see tests/train/test_train.py).
        inputs = {**inputs, "use_cache": False}
        labels = inputs.pop("labels")
        targets = labels[:, 1:]  # position t predicts token t + 1
        keep = (targets != IGNORE).any(dim=0).nonzero().squeeze(-1)
        outputs = model(**inputs, logits_to_keep=keep)
        logits = outputs.logits.float()
        kept_targets = targets[:, keep]
        loss_sum = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)),
            kept_targets.reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )
        n_valid = (kept_targets != IGNORE).sum()
        denominator = num_items_in_batch if num_items_in_batch is not None else n_valid
        loss = loss_sum / torch.as_tensor(denominator, device=loss_sum.device).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        self._record_metrics(inputs, logits.detach(), kept_targets, n_valid)
        return loss

    def _record_metrics(self, inputs: dict, logits: Any, targets: Any, n_valid: Any) -> None:
        mode = "train" if self.model.training else "eval"
        mask = targets != IGNORE
        correct = ((logits.argmax(-1) == targets) & mask).sum()
        valid = self.accelerator.gather_for_metrics(n_valid).sum()
        correct = self.accelerator.gather_for_metrics(correct).sum()
        self._metrics[mode]["mean_token_accuracy"].append((correct / valid).item() if valid > 0 else 0.0)
        if mode == "train":
            if "attention_mask" in inputs:
                local = inputs["attention_mask"].sum()
            else:
                local = torch.tensor(inputs["input_ids"].numel(), device=inputs["input_ids"].device)
            self._total_train_tokens += int(self.accelerator.gather_for_metrics(local).sum().item())
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
