"""vLLM's CPU punica wrapper with tuneship's LoRA ops (see :mod:`tuneship.serve.lora_ops`).

Imported only inside vLLM's engine process, by qualified name, once the plugin has chosen it.
"""

from __future__ import annotations

import torch
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from tuneship.serve.lora_kernels import SlotWeights
from tuneship.serve.lora_ops import (
    StepPlan,
    dense_expand,
    dense_linear,
    dense_shrink,
    expand,
    grouped_linear,
    shrink,
    token_groups,
)


class PunicaWrapperTuneship(PunicaWrapperCPU):
    """Same metadata as vLLM's CPU wrapper; the LoRA arithmetic runs per adapter group or dense.

    A :class:`StepPlan` is computed once per step in :meth:`update_metadata` and reused by
    every LoRA layer: contiguous adapters (prefill, one adapter) get one product per adapter
    group, interleaved adapters (mixed decode) the dense ops. A call whose token count does
    not match the step's mapping goes to vLLM's own ops.
    """

    plan_: StepPlan | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.weights_ = SlotWeights()  # every layer's slots, laid out for grouped_linear

    def update_metadata(self, mapping, lora_index_to_id, max_loras, vocab_size, **kwargs):
        super().update_metadata(mapping, lora_index_to_id, max_loras, vocab_size, **kwargs)
        self.plan_ = StepPlan(self.token_lora_indices)

    def _plan_for(self, rows: int) -> StepPlan | None:
        plan = self.plan_
        return plan if plan is not None and rows == plan.tokens else None

    def add_shrink(self, y, x, lora_a_stacked, scale, **kwargs):
        x = x.view(-1, x.shape[-1])
        plan = self._plan_for(x.shape[0])
        if plan is None:
            return super().add_shrink(y, x, lora_a_stacked, scale, **kwargs)
        if not plan.dense:
            for i, stacked in enumerate(lora_a_stacked):
                shrink(y[i].view(-1, y[i].shape[-1]), x, stacked, plan.groups, scale)
            return None
        out = dense_shrink(x, lora_a_stacked, plan, scale)
        for i in range(len(lora_a_stacked)):
            flat = y[i].view(-1, y[i].shape[-1])
            flat[:, : out.shape[-1]] = out[:, i]
            if plan.base_rows is not None:
                flat[plan.base_rows] = 0
        return None

    def add_expand(self, y, x, lora_b_stacked, output_slices, offset_start=0, add_inputs=True, **kwargs):
        flat = y.view(-1, y.shape[-1])
        plan = self._plan_for(flat.shape[0])
        if plan is None:
            return super().add_expand(y, x, lora_b_stacked, output_slices, offset_start, add_inputs, **kwargs)
        if plan.dense:  # x: one [tokens, r] buffer per slice, or all in one [slices, tokens, r]
            xs = x.transpose(0, 1) if isinstance(x, torch.Tensor) else x
            return dense_expand(flat, xs, lora_b_stacked, plan, offset_start, output_slices, add_inputs)
        offset = offset_start
        for i, stacked in enumerate(lora_b_stacked):
            expand(flat, x[i], stacked, plan.groups, offset, output_slices[i], add_inputs)
            offset += output_slices[i]
        return None

    def add_lora_linear(
        self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, *, buffer=None, **kwargs
    ):
        """Straight from shrink to expand, no per-slice buffers: dense steps with
        :func:`dense_linear`, contiguous ones with :func:`grouped_linear` (two products per
        adapter group for all slices); anything else as vLLM (its buffers, then
        :meth:`add_shrink` and :meth:`add_expand`, which run the dense ops on a dense step)."""
        plan = self._plan_for(x.view(-1, x.shape[-1]).shape[0])
        if not kwargs.get("add_inputs", True):  # writes instead of adding: vLLM's own path
            plan = None
        flat_x, flat_y = x.view(-1, x.shape[-1]), y.view(-1, y.shape[-1])
        slices_fit = list(output_slices) == [b.shape[-2] for b in lora_b_stacked]
        if plan is not None and buffer is None and slices_fit and sum(output_slices) <= flat_y.shape[1]:
            linear = dense_linear if plan.dense else grouped_linear
            return linear(flat_y, flat_x, lora_a_stacked, lora_b_stacked, plan, scale, self.weights_)
        return super().add_lora_linear(
            y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, buffer=buffer, **kwargs
        )

    def add_lora_embedding(self, y, x, lora_b_stacked, add_inputs=True, **kwargs):
        plan = self._plan_for(y.shape[0])
        if plan is None:
            return super().add_lora_embedding(y, x, lora_b_stacked, add_inputs, **kwargs)
        return expand(y, x, lora_b_stacked, plan.groups, 0, None, add_inputs)

    def add_lora_logits(self, y, x, lora_a_stacked, lora_b_stacked, scale, *, buffer=None, **kwargs):
        flat_y, flat_x = y.view(-1, y.shape[-1]), x.view(-1, x.shape[-1])
        groups = token_groups(self.sampler_indices)
        if buffer is None:
            buffer = torch.zeros((flat_x.size(0), lora_b_stacked.size(-1)), dtype=torch.float32)
        shrink(buffer, flat_x, lora_a_stacked, groups, scale)
        expand(flat_y, buffer, lora_b_stacked, groups, 0, None, True)
