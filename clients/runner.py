"""Send evaluation items to an OpenAI-compatible server and record every answer.

Requests run concurrently (bounded), each with a timeout; 429, 5xx, timeouts and
connection errors are retried with exponential backoff and jitter, other 4xx are not
(the ``openai`` client's own retries are off: it would also retry 408/409). Each answer
is appended to a JSONL file as it arrives, so an interrupted run resumes without
redoing finished items.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tuneship.clients.data import EvalItem
from tuneship.errors import EvalError


@dataclass(frozen=True)
class Sampling:
    """Generation settings, identical for every arm of a comparison."""

    temperature: float = 0.0
    max_tokens: int = 128
    seed: int = 0

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


RETRIES = 5
BACKOFF_S = 0.5


def make_client(endpoint: str, api_key: str | None, timeout: float = 120) -> Any:
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=endpoint, api_key=api_key or "EMPTY", timeout=timeout, max_retries=0)


def retryable(error: Exception) -> bool:
    """429, 5xx, timeouts and lost connections are worth another try; other 4xx are not."""
    import openai

    if isinstance(error, openai.APIConnectionError):  # includes APITimeoutError
        return True
    return isinstance(error, openai.APIStatusError) and (error.status_code == 429 or error.status_code >= 500)


async def complete_with_retries(client: Any, retries: int = RETRIES, **request: Any) -> Any:
    """``chat.completions.create`` with backoff on retryable errors."""
    for attempt in range(retries + 1):
        try:
            return await client.chat.completions.create(**request)
        except Exception as e:
            if attempt == retries or not retryable(e):
                raise
            await asyncio.sleep(BACKOFF_S * 2**attempt * (0.5 + random.random()))
    raise AssertionError("unreachable")


def list_models(endpoint: str, api_key: str | None = None) -> dict[str, dict]:
    """``GET /v1/models`` as {id: record}; a clear error when the server is unreachable."""
    import openai

    async def fetch() -> dict[str, dict]:
        client = make_client(endpoint, api_key, timeout=10)
        async with client:
            page = await client.models.list()
            return {m.id: m.model_dump() for m in page.data}

    try:
        return asyncio.run(fetch())
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


async def _generate_all(
    items: list[EvalItem],
    model: str,
    client: Any,
    sampling: Sampling,
    out: Path,
    concurrency: int,
    progress: Any,
    retries: int,
) -> None:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(item: EvalItem) -> dict:
        async with semaphore:
            started = time.perf_counter()
            response = await complete_with_retries(
                client,
                retries,
                model=model,
                messages=item.messages,
                temperature=sampling.temperature,
                max_tokens=sampling.max_tokens,
                seed=sampling.seed,
            )
            choice = response.choices[0]
            return {
                "id": item.id,
                "model": model,
                "sampling": sampling.key(),
                "output": choice.message.content or "",
                "finish_reason": choice.finish_reason,
                "latency_s": round(time.perf_counter() - started, 4),
                "completion_tokens": response.usage.completion_tokens if response.usage else None,
            }

    with out.open("a") as f:
        if out.stat().st_size and not out.read_bytes().endswith(b"\n"):
            f.write("\n")  # end a line cut short by an interruption so the next record stays whole
        for task in asyncio.as_completed([one(item) for item in items]):
            record = await task
            f.write(json.dumps(record) + "\n")
            f.flush()
            if progress:
                progress()


def generate(
    items: list[EvalItem],
    model: str,
    endpoint: str,
    out: Path,
    sampling: Sampling,
    api_key: str | None = None,
    concurrency: int = 16,
    timeout: float = 120,
    retries: int = 4,
    progress: Any = None,
) -> dict[str, dict]:
    """Answers for every item (resuming from ``out``), keyed by item id."""
    import openai

    out.parent.mkdir(parents=True, exist_ok=True)
    done = _read_done(out, sampling)
    todo = [item for item in items if item.id not in done]
    if progress:
        for _ in range(len(items) - len(todo)):
            progress()

    async def run() -> None:
        client = make_client(endpoint, api_key, timeout)
        async with client:
            await _generate_all(todo, model, client, sampling, out, concurrency, progress, retries)

    if todo:
        try:
            asyncio.run(run())
        except openai.APIConnectionError:
            raise EvalError(f"lost the connection to {endpoint}; rerun to resume") from None
        except openai.APIStatusError as e:
            raise EvalError(f"{model}: the server answered {e.status_code}: {e.message}") from None
    done = _read_done(out, sampling)
    return {item.id: done[item.id] for item in items}
