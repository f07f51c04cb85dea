"""`tuneship service --backend URL`: a vLLM server the service did not start, behind its front door.

One real service (its managed vLLM on the tiny base, served as ``tiny-base``) and one more vLLM
server of the same weights under another name (``tiny-other``, with an API key the service reads
from an environment variable), both eager and started at once; the openai SDK drives the front door.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import openai
import pytest
from helpers import CLI, free_port
from service.conftest import Service

KEY_ENV = "TS_TEST_BACKEND_KEY"
HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def fleet(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory):
    """(the service, the backend's VLLMServer): both started together, stopped at the end."""
    from tuneship.serve.config import ServeConfig
    from tuneship.serve.server import VLLMServer

    work = tmp_path_factory.mktemp("backend")
    os.environ[KEY_ENV] = "backend-secret"  # the service subprocess inherits it
    config = ServeConfig(
        base=str(tiny_base), served_name="tiny-other", api_key=os.environ[KEY_ENV], port=free_port(),
        kv_cache_gb=1, max_model_len=512, eager=True, log_file=str(work / "backend.log"),
    )  # fmt: skip
    backend = VLLMServer(config)
    backend.start()
    service = Service(
        work / "home", tiny_base, work / "service.log", eager=True,
        extra_args=("--backend", f"{backend.url}#{KEY_ENV}"),
    )  # fmt: skip
    try:
        service.start()
        backend.wait_ready()
        service.wait_ready()
        yield service, backend
    finally:
        backend.stop()
        os.environ.pop(KEY_ENV, None)
        if service.process is not None:
            assert service.stop() == []


def test_bad_backend_urls_are_refused_up_front(tmp_path: Path) -> None:
    args = ["--backend", "ftp://fleet:8000", "--backend", "http://fleet:8000/api", "--backend", "http://fleet#NO_SUCH_KEY_VAR"]  # fmt: skip
    done = subprocess.run([*CLI, "service", "--home", str(tmp_path), *args], capture_output=True, text=True)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "not an http(s) URL" in done.stderr
    assert "root URL" in done.stderr
    assert "NO_SUCH_KEY_VAR" in done.stderr and "not set" in done.stderr


def test_models_merge_the_backends_models(fleet) -> None:
    service, _ = fleet
    listed = {m.id: m for m in service.client(service.user_key).models.list().data}
    assert {"tiny-base", "tiny-other"} <= set(listed)
    other = listed["tiny-other"].model_dump()
    assert other["owned_by"] == "vllm" and "parent" in other and other["parent"] is None  # a base


def test_a_backends_model_is_answered_by_it(fleet) -> None:
    service, _ = fleet
    client = service.client(service.user_key)
    answer = client.chat.completions.create(model="tiny-other", messages=HELLO, max_tokens=5)
    assert answer.model == "tiny-other" and answer.usage.completion_tokens > 0
    chunks = list(
        client.chat.completions.create(model="tiny-other", messages=HELLO, max_tokens=5, stream=True)
    )
    assert {c.model for c in chunks} == {"tiny-other"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_an_unknown_model_gets_the_managed_servers_404(fleet) -> None:
    service, _ = fleet
    with pytest.raises(openai.NotFoundError) as caught:
        service.client(service.user_key).chat.completions.create(model="nobody", messages=HELLO, max_tokens=3)
    assert "nobody" in caught.value.response.json()["error"]["message"]


def test_a_stopped_backend_gets_a_503_while_the_base_answers(fleet) -> None:
    service, backend = fleet
    backend.stop()
    client = service.client(service.user_key)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="tiny-other", messages=HELLO, max_tokens=3)
    assert caught.value.status_code == 503
    error = caught.value.response.json()["error"]
    assert error["code"] == "model_server_unavailable" and error["type"] == "server_error"
    assert "tiny-other" in error["message"] and backend.url.removesuffix("/v1") in error["message"]
    assert client.chat.completions.create(model="tiny-base", messages=HELLO, max_tokens=3).choices
    assert "tiny-other" not in {m.id for m in client.models.list().data}  # skipped while it is down
