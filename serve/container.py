"""``tuneship serve --runtime docker``: the same server, in the pinned serving image.

The container specification (image, command, mounts, environment, ports, GPU request)
is built from the same checked configuration as a local server; the Docker SDK runs it
where an engine answers (``DOCKER_HOST`` or the default socket). Inside the container:
the model at ``/models/base``, start-time adapters at ``/adapters/NAME``, the registry
at ``/registry``, the adapters' chat template (when it is not the base's own) at
``/templates/chat_template.jinja``, vLLM listening on 0.0.0.0:8000, published on the host's
``--host:--port``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneship.errors import ServerError
from tuneship.serve.server import ServeConfig, VLLMServer, build_vllm_args

VERSIONS_FILE = Path(__file__).resolve().parents[1] / "docker" / "versions.env"
CONTAINER_PORT = 8000
MODEL_MOUNT = "/models/base"
REGISTRY_MOUNT = "/registry"
ADAPTERS_MOUNT = "/adapters"
TEMPLATE_MOUNT = "/templates/chat_template.jinja"  # one file, wherever it lies on the host
GENERATION_MOUNT = "/generation"  # a generation config with the template's end of turn


def pinned_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """``docker/versions.env``: KEY=VALUE lines, the one place image versions are pinned."""
    if not path.is_file():
        raise ServerError(f"{path} not found: --runtime docker runs from a tuneship checkout")
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.strip().startswith("#")}


@dataclass
class ContainerSpec:
    image: str
    command: list[str]
    mounts: dict[str, dict[str, str]]  # host path -> {"bind": container path, "mode": "ro"|"rw"}
    environment: dict[str, str]
    ports: dict[str, tuple[str, int]]  # "8000/tcp" -> (host interface, host port); {} on the host network
    gpu: bool
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    network: str = "bridge"  # "host": share the host's network (engines started without a bridge)

    def run_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``docker.DockerClient().containers.run``."""
        kwargs: dict[str, Any] = {
            "image": self.image,
            "command": self.command,
            "volumes": self.mounts,
            "environment": self.environment,
            "name": self.name,
            "labels": self.labels,
            "detach": True,
            "shm_size": "2g",
        }
        if self.network == "host":
            kwargs["network_mode"] = "host"
            # The image's health check asks port 8000; on the host network the server is elsewhere.
            port = self.command[self.command.index("--port") + 1]
            url = f"http://127.0.0.1:{port}/health"
            probe = f"import urllib.request; urllib.request.urlopen('{url}', timeout=4)"
            kwargs["healthcheck"] = {
                "test": ["CMD", "python3", "-c", probe],
                "interval": 10 * 10**9,
                "timeout": 5 * 10**9,
                "retries": 3,
                "start_period": 300 * 10**9,
            }
        else:
            kwargs["ports"] = self.ports
        if self.gpu:
            import docker

            kwargs["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
        return kwargs


def container_spec(server: VLLMServer, image: str | None = None, network: str = "bridge") -> ContainerSpec:
    """The container that serves ``server``'s configuration."""
    config: ServeConfig = server.config
    versions = pinned_versions()
    image = image or versions["TUNESHIP_SERVE_IMAGE" if server.gpu else "TUNESHIP_SERVE_CPU_IMAGE"]
    mounts = {str(server.base.path): {"bind": MODEL_MOUNT, "mode": "ro"}}
    adapter_paths = {}
    registry_entries = set()
    if config.registry:
        mounts[str(Path(config.registry).resolve())] = {"bind": REGISTRY_MOUNT, "mode": "ro"}
        registry_entries = {p.name for p in Path(config.registry).iterdir()}
    for name, path in server.adapters.items():
        if name in registry_entries and Path(path).parent.resolve() == Path(config.registry).resolve():
            adapter_paths[name] = f"{REGISTRY_MOUNT}/{name}"
        else:
            adapter_paths[name] = f"{ADAPTERS_MOUNT}/{name}"
            mounts[str(Path(path).resolve())] = {"bind": adapter_paths[name], "mode": "ro"}
    template = server.chat_template.file
    if template is not None:
        mounts[str(template.resolve())] = {"bind": TEMPLATE_MOUNT, "mode": "ro"}
    generation = server.stopping.generation_config
    if generation is not None:  # the server's stop ids (tuneship.serve.stopping)
        mounts[str(generation)] = {"bind": GENERATION_MOUNT, "mode": "ro"}
    command = build_vllm_args(
        config,
        server.base,
        adapter_paths,
        server.ranks,
        server.gpu,
        python="python3",
        model_path=MODEL_MOUNT,
        host=config.host if network == "host" else "0.0.0.0",
        port=config.port if network == "host" else CONTAINER_PORT,
        chat_template=TEMPLATE_MOUNT if template is not None else None,
        generation_config=GENERATION_MOUNT if generation is not None else "auto",
    )
    # The image's entrypoint is vLLM's server; the command carries only its arguments.
    arguments = command[3:]
    environment = server.engine_environment(
        registry_path=REGISTRY_MOUNT if config.registry else None, model_path=MODEL_MOUNT
    )
    return ContainerSpec(
        image=image,
        command=arguments,
        mounts=mounts,
        environment=environment,
        ports={} if network == "host" else {f"{CONTAINER_PORT}/tcp": (config.host, config.port)},
        gpu=server.gpu,
        name=f"tuneship-serve-{config.port}",
        labels={"tuneship.role": "serve", "tuneship.base": server.base.name},
        network=network,
    )


def _check_readable_by_others(path: Path) -> None:
    """The image runs as an unprivileged user: mounted files must be world-readable."""
    import stat

    for item in [path, *(path.rglob("*") if path.is_dir() else [])]:
        mode = item.stat().st_mode
        needed = stat.S_IROTH | (stat.S_IXOTH if item.is_dir() else 0)
        if mode & needed != needed:
            raise ServerError(
                f"{item} is not readable by the container's unprivileged user; "
                f"make it readable: chmod -R a+rX {path}"
            )


class DockerServer(VLLMServer):
    """A vLLM server in a container: start, wait until ready, stop and remove it."""

    def __init__(self, config: ServeConfig, image: str | None = None, network: str = "bridge") -> None:
        super().__init__(config)
        self.spec = container_spec(self, image, network)
        for host_path in self.spec.mounts:
            _check_readable_by_others(Path(host_path))
        self.container: Any = None

    def _client(self) -> Any:
        try:
            import docker
        except ImportError:
            raise ServerError("--runtime docker needs the Docker SDK: pip install docker") from None
        try:
            client = docker.from_env()
            client.ping()
        except Exception as e:  # the SDK raises DockerException subclasses and OS errors
            where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
            raise ServerError(f"no Docker engine answers at {where} ({type(e).__name__})") from None
        return client

    def start(self) -> None:
        import docker

        client = self._client()
        try:
            client.images.get(self.spec.image)
        except docker.errors.ImageNotFound:
            raise ServerError(
                f"image {self.spec.image} is not built here: "
                "docker build -f docker/serve-cpu.Dockerfile -t IMAGE . (see docker/README.md)"
            ) from None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.container = client.containers.run(**self.spec.run_kwargs())

    def exit_code(self) -> int | None:
        self.container.reload()
        if self.container.status in ("exited", "dead"):
            return int(self.container.attrs["State"]["ExitCode"])
        return None

    def log_tail(self, lines: int = 15) -> str:
        if self.container is None:
            return "(no container)"
        text = self.container.logs(tail=lines).decode(errors="replace")
        self.log_path.write_text(self.container.logs().decode(errors="replace"))
        return text

    def wait(self) -> int:
        return int(self.container.wait()["StatusCode"])

    def stop(self, timeout: float = 30) -> None:
        if self.container is None:
            return
        try:
            self.log_tail()
            self.container.stop(timeout=int(timeout))
        finally:
            self.container.remove(force=True)
            self.container = None
            time.sleep(0.1)
