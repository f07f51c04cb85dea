"""The evaluation suite's own overhead against plain `openai` client calls.

    .venv/bin/python bench/eval_overhead.py [--items 64] [--concurrency 8]

One vLLM server (default base model); the same chat requests (ticket prompts, greedy,
--max-tokens) sent twice per round, alternating which goes first: once by a plain
asyncio + AsyncOpenAI script with the same concurrency, once by tuneship's runner
(retries, per-request timeout, answers appended to JSONL as they arrive). Prints
both wall times (best of --rounds) and the overhead ratio. Aim: under 5%.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def plain(endpoint: str, model: str, prompts: list[list[dict]], concurrency: int, max_tokens: int) -> float:
    from openai import AsyncOpenAI

    async def run() -> None:
        client = AsyncOpenAI(base_url=endpoint, api_key="EMPTY")
        semaphore = asyncio.Semaphore(concurrency)

        async def one(messages: list[dict]) -> str:
            async with semaphore:
                reply = await client.chat.completions.create(
                    model=model, messages=messages, temperature=0, max_tokens=max_tokens, seed=0
                )
                return reply.choices[0].message.content or ""

        async with client:
            await asyncio.gather(*(one(p) for p in prompts))

    started = time.perf_counter()
    asyncio.run(run())
    return time.perf_counter() - started


def suite(endpoint: str, model: str, items: list, concurrency: int, max_tokens: int, out: Path) -> float:
    from tuneship.clients.runner import Sampling, generate

    out.unlink(missing_ok=True)  # never resume: every request is sent
    started = time.perf_counter()
    generate(items, model, endpoint, out, Sampling(max_tokens=max_tokens), concurrency=concurrency)
    return time.perf_counter() - started


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=8032)
    args = parser.parse_args()

    from tuneship.clients.data import load_items
    from tuneship.serve.server import ServeConfig, VLLMServer

    items = load_items(REPO / "examples" / "tickets" / "eval.jsonl", limit=args.items)
    prompts = [item.messages for item in items]
    with tempfile.TemporaryDirectory() as work:
        config = ServeConfig(served_name="base", port=args.port, log_file=f"{work}/vllm.log")
        with VLLMServer(config) as server:
            plain(server.url, "base", prompts[:8], args.concurrency, args.max_tokens)  # warm-up
            ours, theirs = [], []
            for r in range(args.rounds):
                order = [("plain", theirs), ("suite", ours)]
                for arm, times in order if r % 2 == 0 else reversed(order):
                    if arm == "plain":
                        times.append(plain(server.url, "base", prompts, args.concurrency, args.max_tokens))
                    else:
                        out = Path(work) / "answers.jsonl"
                        times.append(suite(server.url, "base", items, args.concurrency, args.max_tokens, out))
    print()
    print(json.dumps({"plain_s": theirs, "suite_s": ours}))
    print(f"{args.items} requests, concurrency {args.concurrency}, {args.max_tokens} tokens each")
    print(f"plain openai script   {min(theirs):7.2f} s (best of {args.rounds})")
    print(f"tuneship runner       {min(ours):7.2f} s (best of {args.rounds})")
    print(f"overhead: {(min(ours) / min(theirs) - 1) * 100:+.1f}%")


if __name__ == "__main__":
    main()
