"""TRL's DPOTrainer on pairs tuneship has rendered, with a preference accuracy on held-out pairs.

Two additions, both within what TRL 1.16 does itself:

* The pairs arrive tokenized (``prompt_ids``, ``chosen_ids``, ``rejected_ids``: the columns TRL's
  own tokenization produces), rendered by :func:`tuneship.train.render.render_pair` through the one
  chat-template owner, so TRL's re-rendering (``_prepare_dataset``) is skipped.
* TRL's reward accuracy compares the policy with the reference, so it is 0 before training by
  construction (both rewards are 0). On held-out pairs this trainer also logs
  ``preference_accuracy``: the share of pairs whose chosen answer the model itself gives a higher
  log-probability (summed over the answer's tokens, as DPO sums them) than the rejected one, a
  number that means the same before and after training. It costs one more forward pass per
  held-out batch, through the LM head TRL installs (``fused_lm_head``; only answer tokens are
  projected).
"""

from __future__ import annotations

from typing import Any

import torch
from trl import DPOTrainer

from tuneship.train.render import IGNORE


class PreferenceTrainer(DPOTrainer):  # type: ignore[misc]
    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        return dataset  # already tokenized by tuneship (see the module docstring)

    def compute_loss(
        self, model: Any, inputs: dict, return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if not self.model.training:
            self._record_preference(model, inputs)
        return result

    def _record_preference(self, model: Any, inputs: dict) -> None:
        """Append the batch's share of pairs where log p(chosen) > log p(rejected) to the eval metrics."""
        mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(mask == 0, IGNORE)
        with torch.no_grad():
            outputs = model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                labels=labels,
                use_cache=False,
                fused_lm_head=True,
            )
        shifted = mask[:, 1:]
        logps = (outputs.log_probs[:, -shifted.size(1) :] * shifted).sum(dim=1)
        chosen, rejected = logps.chunk(2, dim=0)  # the collator puts every chosen row first
        prefers = self.accelerator.gather((chosen > rejected).float())
        self._metrics["eval"]["preference_accuracy"].append(prefers.mean().item())
