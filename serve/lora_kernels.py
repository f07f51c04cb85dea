"""A fused LoRA layer's weights laid out for one product each way, and the products.

:class:`SlotWeights` lays out the weights of a fused LoRA layer (qkv's three output slices,
gate_up's two) for one adapter slot or for all of them: the A of every slice (and slot)
stacked, the B block-diagonal, so that the shrink and the expand are one matrix product each
(:class:`Layout`). Rows run slice by slice, then slot by slot within a slice.

Where the CPU has AMX tiles and the activations are bf16, both products run vLLM-CPU's
packed-weight kernel (``weight_packed_linear``, which vLLM uses for its own small linear
layers: bf16 inputs, float32 sums, bf16 output), the weights packed once; the rank rows are
padded with zeros to the kernel's tile. At LoRA's shapes it takes 0.4-0.5 of the time of
torch's bf16 matmul (``bench/lora_ops.py`` measures the layer). Elsewhere torch's matmul
runs: the shrink in float32 (vLLM's shrink dtype), the expand in the output's dtype. Both
round the shrink's float32 sums to the output's dtype before the expand, as vLLM's ops do.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# One LoRA stack per output slice: [slots, 1, r, in] (A) or [slots, 1, out, r] (B).
Stacks = Sequence[torch.Tensor]
# The packed kernel's tiles: the reduced dimension a multiple of 32, the output one of 16.
TILE_K, TILE_N = 32, 16


@dataclass(frozen=True)
class Layout:
    """Shrink and expand weights of one fused LoRA layer, for one slot or all slots.

    ``rows``: rank rows (slices * slots * r, padded to :data:`TILE_K` when ``packed``);
    ``width``: the sum of the slices' output widths; ``packed``: the products run vLLM's
    packed kernel (``a``, ``b`` are its packed weights), else torch's (``a`` [rows, in]
    float32, ``b`` [rows, width] in the output dtype).
    """

    a: torch.Tensor
    b: torch.Tensor
    rows: int
    width: int
    packed: bool

    def shrink(self, x: torch.Tensor) -> torch.Tensor:
        """x [tokens, in] -> [tokens, rows]: bf16 when packed, else float32."""
        if self.packed:
            return _packed_product(x, self.a, self.rows)
        return x.to(torch.float32) @ self.a.T

    def expand(self, h: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """h [tokens, rows] -> [tokens, width] in ``dtype``."""
        if self.packed:
            return _packed_product(h, self.b, self.width)
        return h.to(dtype) @ self.b


def _packed_product(x: torch.Tensor, packed: torch.Tensor, n: int) -> torch.Tensor:
    if x.shape[0] == 0:  # the kernel divides by the row count
        return x.new_empty(0, n)
    from vllm import _custom_ops as ops

    return ops.weight_packed_linear_cpu(x.contiguous(), packed, n, None)


@functools.cache
def packed_kernel_available() -> bool:
    """Whether vLLM-CPU's packed bf16 kernel runs here (a CPU with AMX tiles, vLLM's CPU ops)."""
    try:
        from vllm import _custom_ops  # noqa: F401  (registers torch.ops._C)

        return bool(torch.cpu._is_amx_tile_supported()) and hasattr(torch.ops._C, "weight_packed_linear")
    except (ImportError, AttributeError, RuntimeError):
        return False


class SlotWeights:
    """Every fused LoRA layer's :class:`Layout` per slot (or for all slots), kept until a stack
    changes: vLLM copies an adapter into its slot in place, which moves the stack's version
    counter; stacks without one (inference tensors) are laid out on every call.

    ``packed``: use the packed kernel where it applies (None: when :func:`packed_kernel_available`).
    """

    def __init__(self, packed: bool | None = None) -> None:
        self.packed = packed_kernel_available() if packed is None else packed
        self._laid_out: dict[tuple, tuple] = {}

    def get(
        self, a_stacks: Stacks, b_stacks: Stacks, slot: int | None, dtype: torch.dtype, exact: bool
    ) -> Layout:
        """The layout of ``slot``'s weights (every slot's for None), for output ``dtype``.

        ``exact``: the caller applies no scale between the products (vLLM's LoRA layers pass
        1.0), so the packed kernel's bf16 shrink output is what vLLM's ops round to.
        """
        packed = self.packed and exact and _fits_packed(a_stacks, b_stacks, dtype)
        try:
            stamp = tuple(t._version for t in (*a_stacks, *b_stacks))
        except RuntimeError:  # an inference tensor keeps no version counter
            return lay_out(a_stacks, b_stacks, slot, dtype, packed)
        key = (tuple(t.data_ptr() for t in (*a_stacks, *b_stacks)), slot, dtype, packed)
        kept = self._laid_out.get(key)
        if kept is None or kept[0] != stamp:
            kept = (stamp, lay_out(a_stacks, b_stacks, slot, dtype, packed))
            self._laid_out[key] = kept
        return kept[1]


def _fits_packed(a_stacks: Stacks, b_stacks: Stacks, dtype: torch.dtype) -> bool:
    widths = [stacked.shape[-2] for stacked in b_stacks]
    in_features = a_stacks[0].shape[-1]
    return dtype == torch.bfloat16 and in_features % TILE_K == 0 and all(w % TILE_N == 0 for w in widths)


def slot_matrix(stacked: torch.Tensor, slot: int) -> torch.Tensor:
    """One adapter's matrix from a stack shaped [slots, 1, out, in] or [slots, out, in]."""
    matrix = stacked[slot]
    return matrix[0] if matrix.dim() == 3 else matrix


def lay_out(a_stacks: Stacks, b_stacks: Stacks, slot: int | None, dtype: torch.dtype, packed: bool) -> Layout:
    """:class:`Layout` of ``slot`` (all slots for None); see the module's text."""
    slots = range(a_stacks[0].shape[0]) if slot is None else [slot]
    a = torch.cat([slot_matrix(stacked, s) for stacked in a_stacks for s in slots])
    r = a_stacks[0].shape[-2]
    widths = [stacked.shape[-2] for stacked in b_stacks]
    rows = -(-a.shape[0] // TILE_K) * TILE_K if packed else a.shape[0]
    b = torch.zeros(rows, sum(widths), dtype=dtype)
    row = column = 0
    for stacked, width in zip(b_stacks, widths, strict=True):
        for s in slots:
            b[row : row + r, column : column + width] = slot_matrix(stacked, s).T
            row += r
        column += width
    if not packed:
        return Layout(a.to(torch.float32), b, rows, sum(widths), False)
    a = torch.cat([a.to(dtype), a.new_zeros(rows - a.shape[0], a.shape[1], dtype=dtype)])
    pack = torch.ops._C.convert_weight_packed
    return Layout(pack(a.contiguous()), pack(b.T.contiguous()), rows, sum(widths), True)
