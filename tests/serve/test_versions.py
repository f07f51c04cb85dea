"""Immutable versions and aliases, on real vLLM: the two failures of replacing an adapter in place.

(a) Replacing a live adapter in place let vLLM answer from prefix-cache blocks computed with the
old weights (hybrids of both adapters). Now a new version has a name and path of its own: after
promoting it, requests for the alias answer exactly like a fresh server of the new adapter.
(b) Overwriting an adapter that a ``--max-loras 1`` server had evicted made vLLM reload it from disk
with a rank above its limit, which shut the engine down. Now a version's files are never rewritten.
"""

from __future__ import annotations

import httpx
import openai
import pytest
from click.testing import CliRunner
from helpers import API_KEY, drop_alias, make_adapter, registry_server_config
from openai import OpenAI

from tuneship.adapters import adapter_hash
from tuneship.entrypoints.cli import cli

# A long shared system turn: the prompts fill whole KV-cache blocks, which vLLM's prefix cache keeps.
SYSTEM = " ".join(
    f"Rule {i}: answer support tickets politely, name the product, and keep it short." for i in range(12)
)
QUESTIONS = [
    "My invoice is wrong, please help.",
    "The app crashes when I log in.",
    "How do I change my password?",
    "I was charged twice this month.",
    "Can I export my data to CSV?",
]


def _cli(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _client(server) -> OpenAI:
    return OpenAI(base_url=server.url, api_key=API_KEY, max_retries=0)


def _answers(server, model: str, served_as: str | None = None) -> list[str]:
    """Greedy answers to every question, one request at a time; checks who answered."""
    answers = []
    for question in QUESTIONS:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        raw = _client(server).chat.completions.with_raw_response.create(
            model=model, messages=messages, temperature=0, max_tokens=16
        )
        reply = raw.parse()
        if served_as:
            assert reply.model == served_as and raw.headers["x-tuneship-model-version"] == served_as
        answers.append(reply.choices[0].message.content)
    return answers


@pytest.fixture(scope="module")
def small_server(tiny_base, tmp_path_factory):
    """A server with one LoRA slot and --max-lora-rank 8, serving the registry's tickets@1."""
    from tuneship.serve.registry import Registry
    from tuneship.serve.server import VLLMServer

    work = tmp_path_factory.mktemp("versions-server")
    registry = Registry(work / "registry")
    registry.add("tickets", make_adapter(tiny_base, work / "a", seed=11))
    config = registry_server_config(
        registry.root, work, "tiny-base", base=str(tiny_base), max_loras=1, max_lora_rank=8
    )
    with VLLMServer(config) as server:
        yield server


def test_add_numbers_versions_and_moves_the_alias_only_when_promoted(tiny_base, tmp_path):
    from tuneship.serve.registry import Registry

    root = str(tmp_path / "registry")
    a, b, c = (make_adapter(tiny_base, tmp_path / n, seed=s) for n, s in (("a", 1), ("b", 2), ("c", 3)))
    first = _cli("adapters", "add", "tickets", str(a), "--registry", root)
    assert first.exit_code == 0 and "Registered tickets@1: " in first.output
    assert "alias tickets -> tickets@1 (new)" in first.output
    again = _cli("adapters", "add", "tickets", str(a), "--registry", root)
    assert "unchanged: tickets@1 has this content" in again.output
    second = _cli("adapters", "add", "tickets", str(b), "--registry", root)
    assert (
        "Registered tickets@2: " in second.output
        and "alias tickets -> tickets@1 (promote it with:" in second.output
    )
    hash1 = adapter_hash(tmp_path / "registry" / "tickets@1")
    third = _cli("adapters", "add", "tickets", str(c), "--registry", root)
    assert "alias tickets -> tickets@1 (promote it with: tuneship adapters promote tickets@3)" in third.output
    for flag in ("--promote", "--force"):  # add never moves an alias: only the audited commands do
        refused = CliRunner().invoke(cli, ["adapters", "add", "tickets", str(a), "--registry", root, flag])
        assert refused.exit_code == 2 and "tuneship adapters promote tickets@N" in refused.output
    fourth = _cli("adapters", "add", "tickets", str(a), "--registry", root)
    assert "Registered tickets@4: " in fourth.output
    records = ["--registry", root, "--home", str(tmp_path / "records")]
    promoted = _cli("adapters", "promote", "tickets@4", *records, "--reason", "better", "--actor", "ops")
    assert "Promoted: tickets -> tickets@4 (was tickets@1)" in promoted.output
    history = _cli("adapters", "history", "tickets", *records)
    assert (
        "ops" in history.output and "tickets@1 -> tickets@4" in history.output and "better" in history.output
    )
    registry = Registry(root)
    assert [e.name for e in registry.versions("tickets")] == [f"tickets@{n}" for n in (1, 2, 3, 4)]
    assert registry.entries()[0].sha256 == hash1 == adapter_hash(a)  # never rewritten
    assert [e.name for e in registry.served()] == ["tickets@4"]
    assert registry.resolve("tickets") == "tickets@4" and registry.resolve("tickets@2") == "tickets@2"
    listing = _cli("adapters", "list", "--registry", root, "--endpoint", "http://127.0.0.1:9/v1")
    assert "4 adapter(s), 1 alias(es)" in listing.output
    assert [line.split()[0] for line in listing.output.splitlines() if "<- tickets" in line] == ["tickets@4"]


def test_a_promoted_version_answers_the_alias_like_a_fresh_server_of_it(
    live_server, small_server, tiny_base, tmp_path
):
    """(a): no prefix-cache hybrids. The old version still answers by its own name."""
    root = live_server.config.registry
    old, new = (make_adapter(tiny_base, tmp_path / n, seed=s) for n, s in (("old", 3), ("new", 4)))
    assert _cli("adapters", "add", "swap", str(old), "--registry", root).exit_code == 0
    try:
        before = _answers(live_server, "swap", served_as="swap@1")  # loaded on first request
        added = _cli("adapters", "add", "swap", str(new), "--registry", root)
        assert "Registered swap@2: " in added.output
        records = ["--registry", root, "--home", str(tmp_path / "records")]
        assert "Promoted: swap -> swap@2" in _cli("adapters", "promote", "swap@2", *records).output
        after = _answers(live_server, "swap", served_as="swap@2")
        assert _answers(live_server, "swap@1", served_as="swap@1") == before
        models = {m.id: m for m in _client(live_server).models.list().data}
        assert models["swap"].model_extra["tuneship_version"] == "swap@2"
        assert models["swap"].parent == "tiny-base"
    finally:
        drop_alias(root, "swap")
        for version in ("swap@1", "swap@2"):
            _cli("adapters", "unload", version, "--endpoint", live_server.url, "--api-key", API_KEY)
    # The reference: the new adapter on another server that never served the old one.
    fresh_root = small_server.config.registry
    assert _cli("adapters", "add", "fresh", str(new), "--registry", fresh_root).exit_code == 0
    try:
        reference = _answers(small_server, "fresh", served_as="fresh@1")
    finally:
        drop_alias(fresh_root, "fresh")
        _cli("adapters", "unload", "fresh@1", "--endpoint", small_server.url, "--api-key", API_KEY)
    assert after == reference
    assert sum(a != b for a, b in zip(after, before, strict=True)) >= 3  # the versions differ


def test_a_version_above_the_rank_limit_never_touches_the_evicted_one(small_server, tiny_base, tmp_path):
    """(b): on one LoRA slot, a rank-16 version is refused, and the served version reloads intact."""
    root = small_server.config.registry
    endpoint = ["--endpoint", small_server.url, "--api-key", API_KEY]
    served = f"{root}/tickets@1"
    digest = adapter_hash(served)
    before = _answers(small_server, "tickets", served_as="tickets@1")
    big = make_adapter(tiny_base, tmp_path / "big", rank=16, seed=12)
    added = _cli("adapters", "add", "tickets", str(big), "--registry", root)
    assert "Registered tickets@2: " in added.output and "alias tickets -> tickets@1" in added.output
    assert adapter_hash(served) == digest
    refused = _cli("adapters", "load", "tickets@2", "--registry", root, *endpoint)
    assert refused.exit_code == 1 and "rank 16 is above this server's --max-lora-rank 8" in refused.output
    with pytest.raises(openai.NotFoundError):  # nor does a first request load it
        _answers(small_server, "tickets@2")
    other = make_adapter(tiny_base, tmp_path / "other", seed=13)
    assert _cli("adapters", "add", "other", str(other), "--registry", root).exit_code == 0
    loaded = _cli("adapters", "load", "other", "--registry", root, *endpoint)
    assert loaded.exit_code == 0 and "Loaded other@1" in loaded.output, loaded.output
    assert _answers(small_server, "other", served_as="other@1")  # takes the one slot: tickets@1 out
    assert _answers(small_server, "tickets", served_as="tickets@1") == before  # reloaded from its files
    assert adapter_hash(served) == digest
    health = httpx.get(small_server.url.removesuffix("/v1") + "/health", timeout=10)
    assert health.status_code == 200 and small_server.exit_code() is None
    _cli("adapters", "unload", "other@1", *endpoint)
