"""Deterministic (batch-invariant) inference: where vLLM offers it, and how a server says so.

Greedy answers of one model are not a function of the prompt alone: a batching server
computes each request with matrix shapes that depend on what else is in the batch, and in
bf16 another reduction order can flip a near-tie token (two greedy runs of SmolLM2-135M on
vLLM-CPU, at concurrency 16 and 1, answered 20 of 24 open-ended items differently).
vLLM's batch-invariant mode (``VLLM_BATCH_INVARIANT=1``, beta in 0.32) makes each result
independent of the batch. Where it exists, from vLLM 0.32's documentation
(``features/batch_invariance``) and sources (``vllm/model_executor/determinism/``,
``supports_batch_invariance()`` of the attention backends): NVIDIA GPUs of compute
capability 8.0 or higher, AMD Instinct GPUs (gfx90a, gfx942, gfx950) and Intel XPUs with
Triton. Not on CPU: its replacement kernels are Triton GPU kernels and the CPU attention
backend does not support batch invariance.

The serving stage decides (:func:`unavailable_reason`) and reports a
:class:`ServerDeterminism` at ``GET /v1/tuneship/server`` (:data:`SERVER_PATH`); the
client stage reads that report (``ab``, ``verify``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

BATCH_INVARIANT_ENV = "VLLM_BATCH_INVARIANT"
# GET: this server's ServerDeterminism (JSON). Clients append it to an endpoint ending in /v1.
SERVER_PATH = "/v1/tuneship/server"
MIN_CUDA_CAPABILITY = (8, 0)
ROCM_ARCHS = ("gfx90a", "gfx942", "gfx950")

Device = Literal["cpu", "cuda", "rocm", "xpu", "other"]


class ServerDeterminism(BaseModel):
    """Whether a server answers the same prompt the same way whatever else it is serving."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    deterministic: bool | None
    """True: batch-invariant inference is on; False: off; None: the server does not say."""
    detail: str
    """How it is on, or why it is not (one line)."""
    device: str | None = None
    """The engine's device as the server sees it (``cpu``, ``cuda 9.0``, ...)."""

    def describe(self) -> str:
        """One line for reports: ``deterministic: ...``, ``not deterministic: <why>`` or unknown."""
        if self.deterministic:
            return f"deterministic: {self.detail}"
        if self.deterministic is False:
            return f"not deterministic: {self.detail}"
        return f"determinism unknown: {self.detail}"


def unavailable_reason(
    device: Device, capability: tuple[int, int] | None = None, arch: str | None = None
) -> str | None:
    """Why vLLM 0.32 has no batch-invariant mode on this device (None: it has one).

    Args:
        device: the engine's platform.
        capability: CUDA compute capability (major, minor), for ``cuda``.
        arch: the GPU architecture name (``gfx942``...), for ``rocm``.
    """
    if device == "cuda" and capability is not None and tuple(capability) >= MIN_CUDA_CAPABILITY:
        return None
    if device == "rocm" and arch and arch.split(":")[0] in ROCM_ARCHS:
        return None
    if device == "xpu":
        return None
    if device == "cpu":
        why = "its kernels are Triton GPU kernels and the CPU attention backend does not support it"
        return f"vLLM's batch-invariant mode (VLLM_BATCH_INVARIANT) is not available on CPU ({why})"
    if device == "cuda":
        cc = ".".join(map(str, capability)) if capability else "unknown"
        return f"vLLM's batch-invariant mode needs compute capability 8.0 or higher (this GPU: {cc})"
    if device == "rocm":
        return f"vLLM's batch-invariant mode runs on AMD {', '.join(ROCM_ARCHS)} only (this GPU: {arch})"
    return "vLLM's batch-invariant mode needs an NVIDIA (8.0+), AMD Instinct or Intel XPU GPU"


def server_determinism(
    enabled: bool, device: Device, capability: tuple[int, int] | None = None, arch: str | None = None
) -> ServerDeterminism:
    """What a server reports: batch-invariant mode requested (``enabled``) on this device."""
    shown = f"{device} {'.'.join(map(str, capability))}" if capability else (arch and f"{device} {arch}")
    where = shown or device
    reason = unavailable_reason(device, capability, arch)
    if enabled and reason is None:
        detail = f"vLLM batch-invariant inference on ({BATCH_INVARIANT_ENV}=1, {where})"
        return ServerDeterminism(deterministic=True, detail=detail, device=where)
    if reason is None:
        detail = "batch-invariant mode off (tuneship serve --deterministic turns it on here)"
        return ServerDeterminism(deterministic=False, detail=detail, device=where)
    return ServerDeterminism(deterministic=False, detail=reason, device=where)
