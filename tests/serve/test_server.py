"""Integration: the shared live vLLM server (tiny base + tiny adapter) through the openai client."""

import json

import pytest
from helpers import API_KEY
from openai import OpenAI

from tuneship.errors import TuneshipError
from tuneship.serve.config import ServeConfig
from tuneship.serve.server import VLLMServer


def test_models_lists_adapter_with_base_as_parent(live_server):
    models = {m.id: m for m in OpenAI(base_url=live_server.url, api_key=API_KEY).models.list().data}
    assert {"tiny-base", "tiny-adapter", "tiny-alt"} <= set(models)
    assert models["tiny-adapter"].parent == models["tiny-alt"].parent == "tiny-base"


def _greedy(client, model, messages):
    response = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=16)
    return response.choices[0].message.content


def test_adapter_changes_greedy_outputs(live_server, ticket_rows):
    client = OpenAI(base_url=live_server.url, api_key=API_KEY)
    prompts = [row["messages"][:-1] for row in ticket_rows[:6]]
    base = [_greedy(client, "tiny-base", p) for p in prompts]
    adapter = [_greedy(client, "tiny-adapter", p) for p in prompts]
    assert all(isinstance(t, str) and t for t in base + adapter)
    assert sum(a != b for a, b in zip(adapter, base, strict=True)) >= 4, (base, adapter)


def test_vllm_arguments_follow_the_adapters(tiny_base, tiny_run):
    server = VLLMServer(ServeConfig(base=str(tiny_base), adapters={"a": str(tiny_run.adapter_dir)}, port=9))
    args = server.args
    assert args[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert args[args.index("--max-lora-rank") + 1] == "8"
    assert args[args.index("--max-loras") + 1] == "1"
    assert f"a={tiny_run.adapter_dir.resolve()}" in args
    assert server.environment()["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert "tuneship.serve.guard.RegistryGuard" not in args
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in server.environment()
    assert "VLLM_BATCH_INVARIANT" not in server.environment()
    assert args[args.index("--middleware") + 1] == "tuneship.serve.info.ServerInfo"  # GET /v1/tuneship/server
    assert "--enforce-eager" not in args
    assert "LoRA ops: tuneship's grouped CPU ops" in "\n".join(server.notes())  # vLLM-CPU 0.32
    eager = VLLMServer(ServeConfig(base=str(tiny_base), eager=True, port=9)).args
    assert eager.count("--enforce-eager") == 1


def test_dtype_is_float32_on_a_cpu_that_emulates_bf16_and_the_users_choice_wins(tiny_base, monkeypatch):
    from tuneship.serve import engine

    for native, expected in ((False, ["--dtype", "float32"]), (True, [])):
        monkeypatch.setattr(engine, "bf16_supported", lambda native=native: native)
        args = VLLMServer(ServeConfig(base=str(tiny_base), port=9)).args
        assert [a for i, a in enumerate(args) if "--dtype" in args[i - 1 : i + 1]] == expected
        notes = "\n".join(VLLMServer(ServeConfig(base=str(tiny_base), port=9)).notes())
        assert ("Dtype: float32 (this CPU has no bf16 instructions" in notes) is not native
    chosen = VLLMServer(ServeConfig(base=str(tiny_base), dtype="bfloat16", port=9)).args
    assert chosen[chosen.index("--dtype") + 1] == "bfloat16"
    passed = VLLMServer(ServeConfig(base=str(tiny_base), extra_args=["--dtype=float16"], port=9)).args
    assert "--dtype" not in passed and passed[-1] == "--dtype=float16"


def test_hot_loading_needs_registry_and_key_and_keeps_the_key_off_the_command_line(
    tiny_base, registry, monkeypatch
):
    monkeypatch.setenv("VLLM_LORA_RESOLVER_CACHE_DIR", "/")  # vLLM's unchecked resolver: never inherited
    keyless = VLLMServer(ServeConfig(base=str(tiny_base), registry=str(registry.root), port=9))
    assert {"tiny-adapter@1", "tiny-alt@1"} <= set(keyless.adapters)  # the aliases' versions
    assert "tuneship.serve.guard.RegistryGuard" in keyless.args  # for the aliases only
    keyless_env = keyless.environment()
    assert (
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in keyless_env and "TUNESHIP_MAX_LORA_RANK" not in keyless_env
    )
    assert "Hot loading: off" in "\n".join(keyless.notes())
    assert "Aliases: tiny-adapter -> tiny-adapter@1, tiny-alt -> tiny-alt@1" in "\n".join(keyless.notes())
    server = VLLMServer(ServeConfig(base=str(tiny_base), registry=str(registry.root), api_key="k", port=9))
    env = server.environment()
    assert "k" not in server.args and env["VLLM_API_KEY"] == "k"
    assert server.args[server.args.index("--middleware") + 1] == "tuneship.serve.guard.RegistryGuard"
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True" and "VLLM_LORA_RESOLVER_CACHE_DIR" not in env
    assert env["TUNESHIP_REGISTRY_ROOT"] == str(registry.root.resolve())
    assert env["TUNESHIP_MAX_LORA_RANK"] == "8"


def test_bad_adapter_is_refused_before_vllm_starts(tiny_base, tiny_run, tmp_path):
    import shutil

    bad = tmp_path / "dora"
    shutil.copytree(tiny_run.adapter_dir, bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True, "r": 1024}))
    with pytest.raises(TuneshipError) as info:
        VLLMServer(ServeConfig(base=str(tiny_base), adapters={"bad": str(bad)}))
    assert "DoRA" in str(info.value) and "rank 1024" in str(info.value)


class _ScriptedServer(VLLMServer):
    """The serving lifecycle without an engine: records what happens, in order."""

    def __init__(self, exit_code: int | None) -> None:
        self.events: list[str] = []
        self.exit_code_on_wait = exit_code

    def start(self) -> None:
        self.events.append("start")

    def wait_ready(self, progress=None) -> None:
        self.events.append("ready")

    def wait(self) -> int:
        import os
        import signal
        import time

        self.events.append("serving")
        if self.exit_code_on_wait is None:
            os.kill(os.getpid(), signal.SIGTERM)  # what `kill` or a container stop sends
            time.sleep(5)
        return self.exit_code_on_wait or 0

    def log_tail(self, lines: int = 15) -> str:
        return "last words"

    def stop(self, timeout: float = 30) -> None:
        self.events.append("stop")


def test_serve_until_stopped_stops_on_sigterm_and_reports_an_engine_exit():
    import signal

    from tuneship.errors import ServerError

    handler = signal.getsignal(signal.SIGTERM)
    server = _ScriptedServer(exit_code=None)
    server.serve_until_stopped(
        on_ready=lambda s: s.events.append("on_ready"), on_stopping=lambda: server.events.append("stopping")
    )
    assert server.events == ["start", "ready", "on_ready", "serving", "stopping", "stop"]
    assert signal.getsignal(signal.SIGTERM) == handler
    crashed = _ScriptedServer(exit_code=3)
    with pytest.raises(ServerError, match="exited with code 3:\nlast words"):
        crashed.serve_until_stopped()
    assert crashed.events == ["start", "ready", "serving", "stop"]


def test_binding_beyond_loopback_needs_an_api_key():
    from tuneship.config import load_config

    with pytest.raises(TuneshipError, match="API key"):
        load_config(ServeConfig, host="0.0.0.0")


def test_serve_merged_export_answers_like_the_adapter_and_stops_cleanly(
    tiny_export, live_server, ticket_rows, tmp_path
):
    """`tuneship serve --merged` as a user runs it: ready, answers as base + adapter does,
    then SIGTERM leaves no process behind."""
    import signal
    import subprocess
    import sys
    import time

    import psutil
    from helpers import free_port

    port = free_port()
    command = [sys.executable, "-m", "tuneship.entrypoints.cli", "serve", "--merged", str(tiny_export.out)]
    command += ["--port", str(port), "--kv-cache-gb", "1", "--max-model-len", "512"]
    command += ["--log-file", str(tmp_path / "serve.log"), "--eager"]  # no LoRA: vLLM-CPU would compile
    cli = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in cli.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        assert f"Ready at http://127.0.0.1:{port}/v1" in "".join(lines), (
            "".join(lines) + (tmp_path / "serve.log").read_text()
        )
        assert "  model: tiny-merged\n" in lines
        engine = psutil.Process(cli.pid).children(recursive=True)
        assert engine, "vLLM runs as a child of the command"
        merged = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        adapter = OpenAI(base_url=live_server.url, api_key=API_KEY)
        prompts = [row["messages"][:-1] for row in ticket_rows[:6]]
        same = sum(_greedy(merged, "tiny-merged", p) == _greedy(adapter, "tiny-adapter", p) for p in prompts)
        assert same >= 5, f"merged and base + adapter agree on only {same} of 6 prompts"
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=60) == 0
    finally:
        if cli.poll() is None:
            cli.kill()
    deadline = time.monotonic() + 10
    while (
        any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in engine)
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    alive = [p.pid for p in engine if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"orphaned engine processes: {alive}"
