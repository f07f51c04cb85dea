"""`tuneship serve --runtime docker`: the container specification (unit) and the no-engine error."""

import os
import subprocess

import pytest
from helpers import CLI

from tuneship.errors import ServerError
from tuneship.serve.container import DockerServer, container_spec, pinned_versions
from tuneship.serve.server import ServeConfig, VLLMServer


def test_container_spec_mounts_model_and_registry_and_pins_the_image(tiny_base, registry, tiny_run):
    config = ServeConfig(
        base=str(tiny_base),
        registry=str(registry.root),
        adapters={"extra": str(tiny_run.adapter_dir)},
        api_key="k",
        port=8123,
    )
    spec = container_spec(VLLMServer(config))
    assert spec.image == pinned_versions()["TUNESHIP_SERVE_CPU_IMAGE"]
    assert spec.mounts[str(tiny_base)] == {"bind": "/models/base", "mode": "ro"}
    assert spec.mounts[str(registry.root.resolve())] == {"bind": "/registry", "mode": "ro"}
    assert spec.mounts[str(tiny_run.adapter_dir.resolve())] == {"bind": "/adapters/extra", "mode": "ro"}
    command = spec.command
    assert command[command.index("--model") + 1] == "/models/base"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == "8000"
    modules = command[command.index("--lora-modules") + 1 :]
    assert "tiny-adapter@1=/registry/tiny-adapter@1" in modules and "extra=/adapters/extra" in modules
    assert "k" not in command and spec.environment["VLLM_API_KEY"] == "k"
    assert spec.environment["TUNESHIP_REGISTRY_ROOT"] == "/registry"
    assert spec.ports == {"8000/tcp": ("127.0.0.1", 8123)}
    assert not spec.gpu and "device_requests" not in spec.run_kwargs()
    assert all(str(tiny_base) not in value for value in spec.environment.values())
    host = container_spec(VLLMServer(config), network="host").run_kwargs()
    assert host["network_mode"] == "host" and "ports" not in host
    assert "127.0.0.1:8123/health" in host["healthcheck"]["test"][-1]


def test_gpu_hosts_get_the_gpu_image_and_a_device_request(tiny_base, monkeypatch):
    import tuneship.serve.server as server_module

    monkeypatch.setattr(server_module, "has_cuda", lambda: True)
    spec = container_spec(VLLMServer(ServeConfig(base=str(tiny_base), tensor_parallel_size=2)))
    assert spec.image == pinned_versions()["TUNESHIP_SERVE_IMAGE"]
    assert spec.command[spec.command.index("--tensor-parallel-size") + 1] == "2"
    request = spec.run_kwargs()["device_requests"][0]
    assert request["Count"] == -1 and request["Capabilities"] == [["gpu"]]


def test_without_an_engine_docker_runtime_fails_clearly(tiny_base, monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(ServerError, match="no Docker engine answers"):
        DockerServer(ServeConfig(base=str(tiny_base))).start()
    cli = subprocess.run(
        [*CLI, "serve", "--base", str(tiny_base), "--runtime", "docker"],
        capture_output=True,
        text=True,
        env={**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"},
    )
    assert cli.returncode == 1 and "no Docker engine answers" in cli.stderr and "Traceback" not in cli.stderr
