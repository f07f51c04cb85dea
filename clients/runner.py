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


async def _generate_all(
    items: list[EvalItem],
    model: str,
    client: Any,
    sampling: Sampling,
    out: Path,
    concurrency: int,
    progress: Any,
) -> None:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(item: EvalItem) -> dict:
        async with semaphore:
            started = time.perf_counter()
            response = await client.chat.completions.create(
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
    import openai

    out.parent.mkdir(parents=True, exist_ok=True)
    done = _read_done(out, sampling)
    todo = [item for item in items if item.id not in done]
    if progress:
        for _ in range(len(items) - len(todo)):
            progress()

    async def run() -> None:
        client = make_client(endpoint, api_key, timeout, retries)
        async with client:
            await _generate_all(todo, model, client, sampling, out, concurrency, progress)

    if todo:
        try:
            asyncio.run(run())
        except openai.APIConnectionError:
            raise EvalError(f"lost the connection to {endpoint}; rerun to resume") from None
        except openai.APIStatusError as e:
            raise EvalError(f"{model}: the server answered {e.status_code}: {e.message}") from None
    done = _read_done(out, sampling)
    return {item.id: done[item.id] for item in items}
