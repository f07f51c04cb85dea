"""vLLM's CPU punica wrapper with tuneship's grouped LoRA ops (see :mod:`tuneship.serve.lora_ops`).

Imported only inside vLLM's engine process, by qualified name, once the plugin has chosen it.
"""

from __future__ import annotations

import torch
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from tuneship.serve.lora_ops import Groups, expand, shrink, token_groups


class PunicaWrapperTuneship(PunicaWrapperCPU):
    """Same metadata as vLLM's CPU wrapper; the LoRA arithmetic runs once per adapter group.

    The groups are computed once per step in :meth:`update_metadata` and reused by every LoRA
    layer. A call whose token count does not match the step's mapping goes to vLLM's own ops.
    """

    token_groups_: Groups = []

    def update_metadata(self, mapping, lora_index_to_id, max_loras, vocab_size, **kwargs):
        super().update_metadata(mapping, lora_index_to_id, max_loras, vocab_size, **kwargs)
        self.token_groups_ = token_groups(self.token_lora_indices)

    def _groups_for(self, rows: int) -> Groups | None:
        return self.token_groups_ if rows == self.token_lora_indices.shape[0] else None

    def add_shrink(self, y, x, lora_a_stacked, scale, **kwargs):
        x = x.view(-1, x.shape[-1])
        groups = self._groups_for(x.shape[0])
        if groups is None:
            return super().add_shrink(y, x, lora_a_stacked, scale, **kwargs)
        for i, stacked in enumerate(lora_a_stacked):
            shrink(y[i].view(-1, y[i].shape[-1]), x, stacked, groups, scale)

    def add_expand(self, y, x, lora_b_stacked, output_slices, offset_start=0, add_inputs=True, **kwargs):
        flat = y.view(-1, y.shape[-1])
        groups = self._groups_for(flat.shape[0])
        if groups is None:
            return super().add_expand(y, x, lora_b_stacked, output_slices, offset_start, add_inputs, **kwargs)
        offset = offset_start
        for i, stacked in enumerate(lora_b_stacked):
            expand(flat, x[i], stacked, groups, offset, output_slices[i], add_inputs)
            offset += output_slices[i]

    def add_lora_embedding(self, y, x, lora_b_stacked, add_inputs=True, **kwargs):
        groups = self._groups_for(y.shape[0])
        if groups is None:
            return super().add_lora_embedding(y, x, lora_b_stacked, add_inputs, **kwargs)
        expand(y, x, lora_b_stacked, groups, 0, None, add_inputs)

    def add_lora_logits(self, y, x, lora_a_stacked, lora_b_stacked, scale, *, buffer=None, **kwargs):
        flat_y, flat_x = y.view(-1, y.shape[-1]), x.view(-1, x.shape[-1])
        groups = token_groups(self.sampler_indices)
        if buffer is None:
            buffer = torch.zeros((flat_x.size(0), lora_b_stacked.size(-1)), dtype=torch.float32)
        shrink(buffer, flat_x, lora_a_stacked, groups, scale)
        expand(flat_y, buffer, lora_b_stacked, groups, 0, None, True)
