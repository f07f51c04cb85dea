"""Integration: the registry, hot loading and its guard, on the shared live vLLM server."""

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from helpers import API_KEY, bad_adapters, drop_alias, make_adapter, make_tiny_llama
from openai import OpenAI

from tuneship.errors import ArtifactError
from tuneship.serve.registry import confined, confined_path

MESSAGES = [{"role": "user", "content": "My invoice is wrong, please help."}]


def _tuneship(server, *args):
    command = [sys.executable, "-m", "tuneship.entrypoints.cli", "adapters", *args]
    if args[0] != "add":
        command += ["--endpoint", server.url]
    env = {**os.environ, "TUNESHIP_API_KEY": API_KEY, "TUNESHIP_REGISTRY": server.config.registry}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def _promote(server, version, home):
    """`tuneship adapters promote` on the server's registry, its audit in a service home of the test's."""
    command = [sys.executable, "-m", "tuneship.entrypoints.cli", "adapters", "promote", version,
               "--registry", server.config.registry, "--home", str(home / "records"), "--reason", "test"]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def _client(server, key=API_KEY):
    return OpenAI(base_url=server.url, api_key=key, max_retries=0)


def _chat(client, model, max_tokens=8):
    reply = client.chat.completions.create(
        model=model, messages=MESSAGES, temperature=0, max_tokens=max_tokens
    )
    return reply.choices[0].message.content


@pytest.mark.parametrize("model", ["tiny-base", "tiny-adapter", "tiny-alt"])
def test_every_served_model_answers_chat_and_completions_streamed_and_not(live_server, model):
    client = _client(live_server)
    assert _chat(client, model)
    stream = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert client.completions.create(model=model, prompt="Ticket:", max_tokens=8).choices[0].text
    stream = client.completions.create(model=model, prompt="Ticket:", max_tokens=8, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices)


def test_hot_load_list_and_unload(live_server, tiny_base, tmp_path):
    made = make_adapter(tiny_base, tmp_path / "hot", seed=7)
    added = _tuneship(live_server, "add", "hot", str(made))
    assert added.returncode == 0, added.stderr
    loaded = _tuneship(live_server, "load", "hot")  # the alias: its version loads
    assert loaded.returncode == 0 and "Loaded hot@1 (parent tiny-base" in loaded.stdout, loaded.stderr
    client = _client(live_server)
    assert _chat(client, "hot", 16) != _chat(client, "tiny-base", 16)
    listing = _tuneship(live_server, "list")
    assert "hot@1" in listing.stdout and "adapter of tiny-base" in listing.stdout, listing.stdout
    assert "(live)  <- hot" in listing.stdout and "alias of hot@1" in listing.stdout
    again = _tuneship(live_server, "load", "hot@1")  # same content: nothing to do
    assert again.returncode == 0
    # Roll back: out of the registry (or the resolver would load it again on demand), then unload.
    drop_alias(live_server.config.registry, "hot")
    unloaded = _tuneship(live_server, "unload", "hot@1")
    assert unloaded.returncode == 0, unloaded.stderr
    for name in ("hot", "hot@1"):
        with pytest.raises(openai.NotFoundError):
            _chat(client, name)
    assert _chat(client, "tiny-adapter") and _chat(client, "tiny-base")


def test_a_new_version_loads_beside_the_old_one_and_files_are_never_reloaded_changed(
    live_server, tiny_base, tmp_path
):
    """Promoting moves the alias to a version of its own name; the old one answers as before.
    A live version whose files were changed by hand is refused (reloading it would mix the two)."""
    registry = live_server.config.registry
    first, second = (make_adapter(tiny_base, tmp_path / n, seed=s) for n, s in (("a", 3), ("b", 4)))
    assert _tuneship(live_server, "add", "pair", str(first)).returncode == 0
    try:
        assert _tuneship(live_server, "load", "pair").returncode == 0
        before = _chat(_client(live_server), "pair", 16)
        added = _tuneship(live_server, "add", "pair", str(second))
        assert "alias pair -> pair@1 (promote it with: tuneship adapters promote pair@2)" in added.stdout
        promoted = _promote(live_server, "pair@2", tmp_path)
        assert "Promoted: pair -> pair@2 (was pair@1)" in promoted.stdout, promoted.stderr
        loaded = _tuneship(live_server, "load", "pair", "--replace")
        assert loaded.returncode == 0 and "Loaded pair@2" in loaded.stdout, loaded.stderr
        assert "--replace is not needed" in loaded.stderr
        assert _chat(_client(live_server), "pair", 16) != before
        assert _chat(_client(live_server), "pair@1", 16) == before
        shutil.copyfile(second / "adapter_model.safetensors", f"{registry}/pair@1/adapter_model.safetensors")
        changed = _tuneship(live_server, "load", "pair@1")
        assert changed.returncode == 1 and "live with other content" in changed.stderr
        refused = _load(live_server, {"lora_name": "pair@1"})
        assert refused.status_code == 400 and "never rewritten" in refused.json()["error"]["message"]
        assert _chat(_client(live_server), "pair@1", 16) == before
    finally:
        drop_alias(registry, "pair")
        for version in ("pair@1", "pair@2"):
            _tuneship(live_server, "unload", version)


def test_first_request_loads_a_registry_adapter_by_name(live_server, tiny_base, tmp_path):
    made = make_adapter(tiny_base, tmp_path / "lazy", seed=5)
    shutil.copytree(made, os.path.join(live_server.config.registry, "lazy"))
    assert _chat(_client(live_server), "lazy")
    models = {m.id: m for m in _client(live_server).models.list().data}
    assert models["lazy"].parent == "tiny-base"
    shutil.rmtree(os.path.join(live_server.config.registry, "lazy"))
    assert _tuneship(live_server, "unload", "lazy").returncode == 0


def _load(server, body, key=API_KEY):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{server.url}/load_lora_adapter", json=body, headers=headers, timeout=60)


def test_bad_loads_are_refused_while_traffic_keeps_flowing(live_server, tiny_base, tiny_run, tmp_path):
    root = live_server.config.registry
    make_adapter(tiny_base, os.path.join(root, "rank16"), rank=16, seed=2)
    make_adapter(tiny_base, os.path.join(root, "other-base"), seed=2, base_sha256="0" * 64)
    shutil.copytree(tiny_run.adapter_dir, os.path.join(root, "corrupt"))
    weights = os.path.join(root, "corrupt", "adapter_model.safetensors")
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    outside = make_adapter(tiny_base, tmp_path / "outside", seed=2)
    os.symlink(outside, os.path.join(root, "sneaky"))

    bad = {
        "missing directory": ({"lora_name": "nope", "lora_path": f"{root}/nope"}, 404, "no adapter 'nope'"),
        "rank too high": ({"lora_name": "rank16", "lora_path": f"{root}/rank16"}, 400, "--max-lora-rank 8"),
        "wrong base": ({"lora_name": "other-base", "lora_path": f"{root}/other-base"}, 400, "different base"),
        "corrupt weights": ({"lora_name": "corrupt", "lora_path": f"{root}/corrupt"}, 400, "unreadable"),
        "outside path": ({"lora_name": "outside", "lora_path": str(outside)}, 400, "outside the adapter"),
        "dot-dot": ({"lora_name": "x", "lora_path": f"{root}/../outside"}, 400, "outside the adapter"),
        "symlink out": ({"lora_name": "sneaky", "lora_path": f"{root}/sneaky"}, 400, "outside"),
        "name is a path": ({"lora_name": "../outside"}, 400, "not an adapter name"),
        "an alias": ({"lora_name": "tiny-adapter"}, 400, "'tiny-adapter' is an alias (of tiny-adapter@1)"),
    }
    good_models = ["tiny-base", "tiny-adapter", "tiny-alt"] * 8
    with ThreadPoolExecutor(6) as pool:
        traffic = [pool.submit(_chat, _client(live_server), m) for m in good_models]
        refusals = {case: _load(live_server, body) for case, (body, _, _) in bad.items()}
        answers = [f.result() for f in traffic]  # raises if any request failed
    assert len(answers) == len(good_models) and all(answers)
    for case, (_, status, fragment) in bad.items():
        response = refusals[case]
        assert response.status_code == status and fragment in response.text, (case, response.text)
    # Nor can a request name a way out of the registry for the on-demand resolver.
    for name in ("sneaky", "rank16", "corrupt", "other-base"):
        with pytest.raises(openai.NotFoundError):
            _chat(_client(live_server), name)
    for name in ("rank16", "other-base", "corrupt", "sneaky"):
        path = os.path.join(root, name)
        os.unlink(path) if os.path.islink(path) else shutil.rmtree(path)


# kind (tests/helpers.py bad_adapters) -> a fragment of the reason the guard gives, with HTTP 400
GUARD_REFUSALS = {
    "token-rows": "trained token rows (model.embed_tokens",
    "zero3": "tensors are empty (shape [0]",
    "rank-mismatch": "lora_A rank 8, lora_B rank 8, config r=16",
    "compiled": "'_orig_mod.' prefix, stripped when registered",
    "renamed": "match no module of",
    "other-base": "do not fit the shapes of",
    "added-tokens": "added tokens: model.embed_tokens.base_layer.weight",
    "bin-only": "only adapter_model.bin",
    "no-weights": "no adapter weights",
}


def test_each_bad_kind_is_refused_with_its_status_and_reason(live_server, tiny_base, tmp_path):
    """Copied into the registry by hand (not through adapters add): refused before vLLM sees them,
    400 with the reason in an OpenAI-shaped error; an unknown name 404; statuses never from text."""
    root = live_server.config.registry
    foreign = make_adapter(make_tiny_llama(tmp_path / "wide", hidden_size=256), tmp_path / "foreign")
    made = bad_adapters(
        make_adapter(tiny_base, tmp_path / "good", seed=9), foreign, tiny_base, tmp_path / "k"
    )
    for kind in GUARD_REFUSALS:
        shutil.copytree(made[kind], os.path.join(root, kind))
    try:
        for kind, fragment in GUARD_REFUSALS.items():
            response = _load(live_server, {"lora_name": kind, "lora_path": f"{root}/{kind}"})
            error = response.json()["error"]
            assert response.status_code == 400 and error["type"] == "BadRequestError", (kind, error)
            assert error["code"] == 400 and error["message"].startswith(f"adapter {kind} refused: "), error
            assert fragment in error["message"], (kind, error["message"])
        served = _load(live_server, {"lora_name": "tiny-base"})
        assert served.status_code == 400
        assert "'tiny-base' is the name of the model this server serves" in served.json()["error"]["message"]
        unknown = _load(live_server, {"lora_name": "no-adapter-here"})
        assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "NotFoundError"
        assert "no adapter 'no-adapter-here' in the registry" in unknown.json()["error"]["message"]
        with pytest.raises(openai.BadRequestError) as sdk:  # the SDK reads the guard's error as vLLM's own
            _client(live_server).post(
                "/load_lora_adapter", body={"lora_name": "zero3"}, cast_to=httpx.Response
            )
        assert "DeepSpeed ZeRO-3" in sdk.value.message
        with pytest.raises(openai.NotFoundError):  # nor does a first request load one
            _chat(_client(live_server), "compiled")
        assert _chat(_client(live_server), "tiny-adapter")
    finally:
        for kind in GUARD_REFUSALS:
            shutil.rmtree(os.path.join(root, kind))


def test_statuses_come_from_the_error_type():
    """The middleware on its own (a pure unit): 401 without the key, 403 with hot loading off."""
    import asyncio

    from tuneship.errors import AdapterNotFoundError, AdapterRefusedError, ArtifactError, NotAllowedError
    from tuneship.serve.guard import GuardSettings, RegistryGuard, http_status

    statuses = [http_status(e("no adapter here")) for e in (AdapterNotFoundError, AdapterRefusedError)]
    assert statuses + [http_status(ArtifactError("no adapter")), http_status(NotAllowedError("x"))] == [
        404,
        400,
        400,
        403,
    ]

    async def call(guard, authorization):
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message):
            sent.append(message)

        headers = [(b"authorization", authorization.encode())]
        await guard({"type": "http", "path": "/v1/load_lora_adapter", "headers": headers}, receive, send)
        return sent[0]["status"], json.loads(sent[1]["body"])["error"]

    guard = RegistryGuard(app=None)
    guard.settings = GuardSettings(registry=None, base_sha256=None, max_rank=8, api_key="k")
    assert asyncio.run(call(guard, "Bearer wrong"))[0] == 401
    status, error = asyncio.run(call(guard, "Bearer k"))
    assert (
        status == 403
        and error["type"] == "PermissionDeniedError"
        and "hot loading is off" in error["message"]
    )


def test_api_key_is_enforced(live_server):
    with pytest.raises(openai.AuthenticationError):
        _chat(_client(live_server, key="wrong"), "tiny-base")
    for key in (None, "wrong"):
        response = _load(live_server, {"lora_name": "tiny-alt", "lora_path": "x"}, key=key)
        assert response.status_code == 401 and "API key" in response.text
    env = {k: v for k, v in os.environ.items() if k != "TUNESHIP_API_KEY"}
    command = [sys.executable, "-m", "tuneship.entrypoints.cli", "adapters", "unload", "tiny-alt"]
    cli = subprocess.run([*command, "--endpoint", live_server.url], capture_output=True, text=True, env=env)
    assert cli.returncode == 1 and "401" in cli.stderr and "Traceback" not in cli.stderr


def test_names_and_paths_are_confined_to_the_registry(tmp_path):
    root = tmp_path / "registry"
    (root / "good").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    os.symlink(tmp_path / "secret", root / "link")
    assert confined(root, "good") == (root / "good").resolve()
    assert confined_path(root, root / "good") == (root / "good").resolve()
    for name in ("../secret", "link", "/etc", "", ".hidden", "a/b"):
        with pytest.raises(ArtifactError):
            confined(root, name)
    for path in (tmp_path / "secret", root / ".." / "secret", root / "link", root / "good" / "x"):
        with pytest.raises(ArtifactError):
            confined_path(root, path)
