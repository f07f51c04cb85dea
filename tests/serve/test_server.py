"""Integration: the shared live vLLM server (tiny base + tiny adapter) through the openai client."""

import json

import pytest
from openai import OpenAI

from tuneship.errors import TuneshipError
from tuneship.serve.server import ServeConfig, VLLMServer


def test_models_lists_adapter_with_base_as_parent(live_server):
    models = {m.id: m for m in OpenAI(base_url=live_server.url, api_key="x").models.list().data}
    assert set(models) == {"tiny-base", "tiny-adapter"}
    assert models["tiny-adapter"].parent == "tiny-base"


def _greedy(client, model, messages):
    response = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=16)
    return response.choices[0].message.content


def test_adapter_changes_greedy_outputs(live_server, ticket_rows):
    client = OpenAI(base_url=live_server.url, api_key="x")
    prompts = [row["messages"][:-1] for row in ticket_rows[:6]]
    base = [_greedy(client, "tiny-base", p) for p in prompts]
    adapter = [_greedy(client, "tiny-adapter", p) for p in prompts]
    assert all(isinstance(t, str) and t for t in base + adapter)
    assert sum(a != b for a, b in zip(adapter, base)) >= 4, (base, adapter)


def test_vllm_arguments_follow_the_adapters(tiny_base, tiny_run):
    server = VLLMServer(ServeConfig(base=str(tiny_base), adapters={"a": str(tiny_run.adapter_dir)}, port=9))
    args = server.args
    assert args[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert args[args.index("--max-lora-rank") + 1] == "8"
    assert args[args.index("--max-loras") + 1] == "1"
    assert f"a={tiny_run.adapter_dir.resolve()}" in args
    assert server.environment()["VLLM_CPU_KVCACHE_SPACE"] == "2"


def test_bad_adapter_is_refused_before_vllm_starts(tiny_base, tiny_run, tmp_path):
    import shutil

    bad = tmp_path / "dora"
    shutil.copytree(tiny_run.adapter_dir, bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True, "r": 1024}))
    with pytest.raises(TuneshipError) as info:
        VLLMServer(ServeConfig(base=str(tiny_base), adapters={"bad": str(bad)}))
    assert "DoRA" in str(info.value) and "rank 1024" in str(info.value)


def test_binding_beyond_loopback_needs_an_api_key():
    from tuneship.config import load_config

    with pytest.raises(TuneshipError, match="API key"):
        load_config(ServeConfig, host="0.0.0.0")
