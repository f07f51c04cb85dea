"""Send evaluation items to an OpenAI-compatible server and record every answer.

Requests run concurrently (bounded), each with a timeout. Retries are the ``openai`` SDK's
own (``max_retries``): connection errors, timeouts, 408, 409, 429 and 5xx are retried with
exponential backoff and jitter (honouring ``Retry-After``), other 4xx are not. The one
default is ``clients.config.RETRIES``. Each answer is appended to a JSONL file as it
arrives, so an interrupted run resumes without redoing finished items.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneship.clients.config import RETRIES, Sampling
from tuneship.clients.data import EvalItem
from tuneship.errors import EvalError


def make_client(endpoint: str, api_key: str | None, timeout: float = 120, retries: int = RETRIES) -> Any:
    """An ``openai.AsyncOpenAI`` client for ``endpoint``.

    Args:
        endpoint: OpenAI-compatible base URL (``.../v1``).
        api_key: the server's key (None: a placeholder, for servers without one).
        timeout: seconds per request attempt.
        retries: the SDK's retries on connection errors, timeouts, 408, 409, 429 and 5xx.
    """
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=endpoint, api_key=api_key or "EMPTY", timeout=timeout, max_retries=retries)


def list_models(endpoint: str, api_key: str | None = None) -> dict[str, dict]:
    """``GET /v1/models`` as {id: record}.

    Not retried, so that a server that is not running is reported at once.

    Raises:
        EvalError: the server is unreachable or answers with an error.
    """
    import openai

    client = openai.OpenAI(base_url=endpoint, api_key=api_key or "EMPTY", timeout=10, max_retries=0)
    try:
        with client:
            return {m.id: m.model_dump() for m in client.models.list().data}
    except openai.APIConnectionError:
        raise EvalError(f"cannot reach {endpoint} (is the server running?)") from None
    except openai.APIStatusError as e:
        raise EvalError(f"{endpoint}/models answered {e.status_code}: {e.message}") from None


def _read_done(path: Path, sampling: Sampling) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by an interruption; that item is redone
            if record.get("sampling") == sampling.key() and "output" in record:
                done[record["id"]] = record
    return done


@dataclass(frozen=True)
class ArmPlan:
    """One arm of a comparison as the runner sends it."""

    model: str
    """The served model that answers."""
    out: Path
    """The JSONL file its answers are appended to (and resumed from); one per arm."""
    order: tuple[int, ...] | None = None
    """The order this arm goes through the items, as indices (None: as given)."""


def interleave(queues: dict[str, list[EvalItem]]) -> list[tuple[str, EvalItem]]:
    """Requests in sending order: the arms take turns (a1 b1 a1' a2 b2 a2' ...) until all are sent."""
    longest = max((len(q) for q in queues.values()), default=0)
    return [(arm, q[k]) for k in range(longest) for arm, q in queues.items() if k < len(q)]


async def _generate_all(
    requests: list[tuple[str, EvalItem]],
    arms: dict[str, ArmPlan],
    client: Any,
    sampling: Sampling,
    concurrency: int,
    progress: Any,
) -> None:
    """Send ``requests`` in order through one pool of ``concurrency`` slots; record each answer.

    The semaphore wakes waiters first in, first out, and every task is created up front, so
    requests are sent exactly in list order; ``request`` in each record is that position.
    """
    import openai

    semaphore = asyncio.Semaphore(concurrency)
    sent = 0

    async def one(arm: str, item: EvalItem) -> tuple[str, dict]:
        nonlocal sent
        model = arms[arm].model
        async with semaphore:
            sent += 1
            order, sent_at, started = sent - 1, time.time(), time.perf_counter()
            try:
                response = await client.chat.completions.create(
                    model=model,
                    messages=item.messages,
                    temperature=sampling.temperature,
                    max_tokens=sampling.max_tokens,
                    seed=sampling.seed,
                )
            except openai.APIStatusError as e:
                raise EvalError(f"{model}: the server answered {e.status_code}: {e.message}") from None
            choice = response.choices[0]
            return arm, {
                "id": item.id,
                "model": model,
                "sampling": sampling.key(),
                "output": choice.message.content or "",
                "finish_reason": choice.finish_reason,
                "latency_s": round(time.perf_counter() - started, 4),
                "completion_tokens": response.usage.completion_tokens if response.usage else None,
                "request": order,
                "sent_at": round(sent_at, 4),
            }

    files = {arm: plan.out.open("a") for arm, plan in arms.items()}
    try:
        for arm, f in files.items():
            out = arms[arm].out
            if out.stat().st_size and not out.read_bytes().endswith(b"\n"):
                f.write("\n")  # end a line cut short by an interruption so the next record stays whole
        tasks = [asyncio.create_task(one(arm, item)) for arm, item in requests]
        for task in asyncio.as_completed(tasks):
            arm, record = await task
            files[arm].write(json.dumps(record) + "\n")
            files[arm].flush()
            if progress:
                progress()
    finally:
        for f in files.values():
            f.close()


def generate_arms(
    items: list[EvalItem],
    arms: dict[str, ArmPlan],
    endpoint: str,
    sampling: Sampling,
    api_key: str | None = None,
    concurrency: int = 16,
    timeout: float = 120,
    retries: int = RETRIES,
    progress: Any = None,
) -> dict[str, dict[str, dict]]:
    """Answers of every arm for every item (resuming from each arm's file), arms interleaved.

    All arms share one pool of ``concurrency`` requests and take turns in sending order, so
    each arm meets the same server load and none runs on an idle server (the order is in each
    record: ``request``, its position, and ``sent_at``, Unix seconds).

    Returns:
        {arm: {item id: record with ``output``, ``finish_reason``, ``latency_s``, ``completion_tokens``}}.

    Raises:
        EvalError: the connection was lost, or the server refused a request (after retries).
    """
    import openai

    queues: dict[str, list[EvalItem]] = {}
    for arm, plan in arms.items():
        plan.out.parent.mkdir(parents=True, exist_ok=True)
        done = _read_done(plan.out, sampling)
        ordered = [items[k] for k in plan.order] if plan.order is not None else items
        queues[arm] = [item for item in ordered if item.id not in done]
        if progress:
            for _ in range(len(items) - len(queues[arm])):
                progress()
    requests = interleave(queues)

    async def run() -> None:
        client = make_client(endpoint, api_key, timeout, retries)
        async with client:
            await _generate_all(requests, arms, client, sampling, concurrency, progress)

    if requests:
        try:
            asyncio.run(run())
        except openai.APIConnectionError:
            raise EvalError(f"lost the connection to {endpoint}; rerun to resume") from None
    answers = {}
    for arm, plan in arms.items():
        done = _read_done(plan.out, sampling)
        answers[arm] = {item.id: done[item.id] for item in items}
    return answers


def generate(
    items: list[EvalItem],
    model: str,
    endpoint: str,
    out: Path,
    sampling: Sampling,
    api_key: str | None = None,
    concurrency: int = 16,
    timeout: float = 120,
    retries: int = RETRIES,
    progress: Any = None,
) -> dict[str, dict]:
    """Answers for every item (resuming from ``out``), keyed by item id.

    Args:
        items: the evaluation items; ``model`` answers each once per sampling key.
        out: the JSONL file answers are appended to (and resumed from).
        concurrency: requests in flight; ``timeout``: seconds per attempt;
        retries: the SDK's retries per request; ``progress``: called once per finished item.

    Returns:
        {item id: record with ``output``, ``finish_reason``, ``latency_s``, ``completion_tokens``}.

    Raises:
        EvalError: the connection was lost, or the server refused a request (after retries).
    """
    arms = {model: ArmPlan(model, out)}
    s = (endpoint, sampling, api_key, concurrency, timeout, retries, progress)
    return generate_arms(items, arms, *s)[model]
