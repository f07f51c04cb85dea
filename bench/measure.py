"""Measurements the benchmarks share: the machine's matmul peak, for model FLOPs utilisation."""

from __future__ import annotations

import time


def matmul_peak(dtype_name: str, n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of an n x n matmul in ``dtype_name`` (a torch dtype name) on this machine, now."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    started = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - started)


def mfu(params: float, tokens_per_second: float, peak: float) -> float:
    """Model FLOPs utilisation: 6 FLOPs per parameter per trained token, against ``peak`` FLOP/s."""
    return 6 * params * tokens_per_second / peak
