"""Latency of streamed requests, defined as vLLM's serving benchmark defines it.

For each request, sent with ``stream=True`` (never answered from a cache):

- **TTFT**: time to first token, from sending the request to the first content chunk.
- **ITL**: inter-token latency, the gaps between successive content chunks.
- **TPOT**: time per output token after the first, ``(e2e - ttft) / (output_tokens - 1)``.
- **E2E**: end-to-end latency, from sending the request to the last chunk.
- **Output throughput**: all output tokens of the run / the run's wall time.

Output tokens are the server's own count (``stream_options.include_usage``).
Percentiles: p50/p90/p99 per arm.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from tuneship.clients.runner import make_client

PERCENTILES = (50, 90, 99)


@dataclass
class RequestTiming:
    ttft: float
    e2e: float
    output_tokens: int
    itl: list[float] = field(default_factory=list)

    @property
    def tpot(self) -> float | None:
        return (self.e2e - self.ttft) / (self.output_tokens - 1) if self.output_tokens > 1 else None


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class LatencyResult:
    model: str
    concurrency: int
    timings: list[RequestTiming]
    duration: float
    failed: int = 0

    @property
    def output_throughput(self) -> float:
        return sum(t.output_tokens for t in self.timings) / self.duration if self.duration else 0.0

    def summary(self) -> dict[str, Any]:
        metrics = {
            "ttft": [t.ttft for t in self.timings],
            "tpot": [t.tpot for t in self.timings if t.tpot is not None],
            "itl": [gap for t in self.timings for gap in t.itl],
            "e2e": [t.e2e for t in self.timings],
        }
        out: dict[str, Any] = {
            "model": self.model,
            "concurrency": self.concurrency,
            "requests": len(self.timings),
            "failed": self.failed,
            "output_tokens": sum(t.output_tokens for t in self.timings),
            "duration_s": round(self.duration, 3),
            "output_throughput": round(self.output_throughput, 2),
        }
        for name, values in metrics.items():
            for q in PERCENTILES:
                value = percentile(values, q)
                out[f"{name}_p{q}_ms"] = round(value * 1000, 2) if value is not None else None
        return out


async def _timed(
    client: Any, model: str, messages: list[dict], max_tokens: int, ignore_eos: bool
) -> RequestTiming:
    started = time.perf_counter()
    stream = await client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True} if ignore_eos else None,
    )
    first = last = None
    gaps: list[float] = []
    chunks = 0
    usage_tokens = None
    async for chunk in stream:
        now = time.perf_counter()
        if chunk.usage is not None:
            usage_tokens = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            chunks += 1
            if first is None:
                first = now
            else:
                gaps.append(now - last)  # type: ignore[operator]
            last = now
    end = time.perf_counter()
    tokens = usage_tokens if usage_tokens is not None else chunks
    return RequestTiming(ttft=(first or end) - started, e2e=end - started, output_tokens=tokens, itl=gaps)


async def _run(
    endpoint: str,
    api_key: str | None,
    model: str | list[str],
    prompts: list[list[dict]],
    concurrency: int,
    max_tokens: int,
    ignore_eos: bool,
) -> LatencyResult:
    semaphore = asyncio.Semaphore(concurrency)
    client = make_client(endpoint, api_key, timeout=600, retries=0)  # a retry would hide in the timing
    failed = 0

    models = [model] if isinstance(model, str) else model

    async def one(i: int, messages: list[dict]) -> RequestTiming | None:
        nonlocal failed
        async with semaphore:
            try:
                return await _timed(client, models[i % len(models)], messages, max_tokens, ignore_eos)
            except Exception:  # a failed request is counted, not timed
                failed += 1
                return None

    async with client:
        started = time.perf_counter()
        results = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
        duration = time.perf_counter() - started
    return LatencyResult("+".join(models), concurrency, [r for r in results if r], duration, failed)


def measure_latency(
    endpoint: str,
    model: str | list[str],
    prompts: list[list[dict]],
    concurrency: int = 8,
    max_tokens: int = 64,
    api_key: str | None = None,
    ignore_eos: bool = False,
) -> LatencyResult:
    """Send every prompt (chat messages) streamed, ``concurrency`` at a time, and time each.

    ``ignore_eos`` (vLLM's extension) makes every request produce exactly ``max_tokens``,
    so that arms whose answers differ in length are compared on equal work. A list of models
    sends mixed traffic: prompt i goes to ``model[i % len(model)]``.
    """
    return asyncio.run(_run(endpoint, api_key, model, prompts, concurrency, max_tokens, ignore_eos))
