"""The CPU serving image built and run for real, with a Docker engine these tests start.

Debian's engine (docker.io) is started on a private socket with no bridge network; a
Debian base image is made with debootstrap (no registry is reachable) and cached under
$TUNESHIP_CACHE/docker; the image is built offline from the wheelhouse with
--network none; `tuneship serve --runtime docker` runs it with the tiny model and adapter;
`tuneship ab` talks to it through the openai client. The engine, its containers and the
images of older sources are removed at the end; the engine's image store stays in
$TUNESHIP_CACHE/docker/engine, so its layer cache makes the next build install only what
changed (the Dockerfile installs the dependencies in a layer of their own, before the sources).
Where no engine can be started (no root, no apt), the tests say why and are skipped.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import API_KEY, REPO, free_port

CACHE = Path(os.environ.get("TUNESHIP_CACHE", Path.home() / ".cache" / "tuneship")) / "docker"
BASE_TAG = "tuneship-test/bookworm:local"
DEPS_TAG = "tuneship-test/serve-cpu-deps:local"  # the Dockerfile's deps stage: tagged, so kept as cache
IMAGE_TAG = "tuneship-test/serve-cpu:local"


def _ensure_tools() -> str | None:
    """None when dockerd and debootstrap are there (installed with apt if need be), else why not."""
    if shutil.which("dockerd") and shutil.which("debootstrap"):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "no Docker engine here, and installing docker.io needs root and apt-get"
    done = subprocess.run(
        ["apt-get", "install", "-y", "-q", "docker.io", "debootstrap"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0 or not shutil.which("dockerd"):
        return f"apt-get install docker.io debootstrap failed: {done.stderr[-300:]}"
    return None


@pytest.fixture(scope="module")
def engine():
    reason = _ensure_tools()
    if reason:
        pytest.skip(reason)
    import docker

    work = Path(tempfile.mkdtemp(prefix="tsd-", dir="/tmp"))  # short: a unix socket path has a length limit
    host = f"unix://{work}/docker.sock"
    log = (work / "dockerd.log").open("wb")
    daemon = subprocess.Popen(
        [
            "dockerd",
            "--host",
            host,
            "--data-root",
            str(CACHE / "engine"),
            "--exec-root",
            str(work / "exec"),
            "--pidfile",
            str(work / "docker.pid"),
            "--iptables=false",
            "--bridge=none",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            client = docker.DockerClient(base_url=host)  # asks the engine its API version
            client.ping()
            break
        except Exception:
            if daemon.poll() is not None or time.monotonic() > deadline:
                daemon.kill()
                pytest.skip(f"dockerd did not start: {(work / 'dockerd.log').read_text()[-400:]}")
            time.sleep(0.5)
    try:
        yield client, host
    finally:
        try:
            for container in client.containers.list(all=True):
                container.remove(force=True)
            client.images.prune(filters={"dangling": True})  # older builds: what no tag leads to
            assert not client.images.list(filters={"dangling": True}), "only tagged images are kept"
        finally:
            client.close()
            _stop(daemon, work, log)


def _stop(daemon: subprocess.Popen, work: Path, log) -> None:
    """Stop the engine and remove its directories (unmounting what it left mounted)."""
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
    log.close()
    for mount in (work / "exec" / "netns").glob("*"):  # dockerd leaves its netns bind mount behind
        subprocess.run(["umount", "--lazy", str(mount)], capture_output=True)
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def base_image(engine):
    """A Debian bookworm base with Python 3.11, made with debootstrap (cached as a tarball)."""
    client, _ = engine
    rootfs_tar = CACHE / "bookworm-python.tar"
    if not rootfs_tar.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            rootfs = Path(tmp) / "rootfs"
            subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    "--include=python3,python3-venv,ca-certificates",
                    "bookworm",
                    str(rootfs),
                ],
                check=True,
                capture_output=True,
                timeout=900,
            )
            partial = Path(tmp) / "rootfs.tar"
            subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
            partial.rename(rootfs_tar)
    if not client.images.list(name=BASE_TAG):  # imported once: a new import would void the layer cache
        with rootfs_tar.open("rb") as f:
            client.api.import_image_from_data(f.read(), repository=BASE_TAG.split(":")[0], tag="local")
    return BASE_TAG


@pytest.fixture(scope="module")
def serving_image(engine, base_image):
    """docker/serve-cpu.Dockerfile built with no network at all, from the wheelhouse."""
    client, _ = engine
    subprocess.run(
        [sys.executable, str(REPO / "docker" / "wheelhouse.py"), "cpu"], check=True, capture_output=True
    )
    for target, tag in (("deps", DEPS_TAG), (None, IMAGE_TAG)):
        client.images.build(
            path=str(REPO),
            dockerfile="docker/serve-cpu.Dockerfile",
            tag=tag,
            target=target,
            buildargs={"OFFLINE": "1", "BASE_IMAGE": base_image},
            network_mode="none",
            rm=True,
            forcerm=True,
        )
    image = client.images.get(IMAGE_TAG)
    assert image.attrs["Config"]["User"] == "10001"
    assert image.attrs["Config"]["Healthcheck"]["Test"][0] == "CMD"
    return IMAGE_TAG


def test_the_cpu_image_serves_an_adapter_and_answers_an_ab_run(
    engine, serving_image, tiny_base, tiny_run, ticket_rows, tmp_path
):
    import json

    client, host = engine
    port = free_port()
    env = {**os.environ, "DOCKER_HOST": host, "TUNESHIP_API_KEY": API_KEY}
    command = [
        sys.executable,
        "-m",
        "tuneship.entrypoints.cli",
        "serve",
        "--runtime",
        "docker",
        "--docker-network",
        "host",
    ]
    command += ["--image", serving_image, "--base", str(tiny_base), "--served-name", "tiny-base"]
    command += ["--adapter", f"tiny-adapter={tiny_run.adapter_dir}", "--port", str(port)]
    command += ["--kv-cache-gb", "1", "--max-model-len", "512", "--log-file", str(tmp_path / "serve.log")]
    cli = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = []
        for line in cli.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith(("Press Ctrl-C", "Error")):
                break
        assert f"Ready at http://127.0.0.1:{port}/v1" in "".join(lines), "".join(lines)
        (container,) = client.containers.list()
        assert container.attrs["Config"]["User"] == "10001"
        mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
        assert mounts["/models/base"]["RW"] is False and mounts["/adapters/tiny-adapter"]["RW"] is False
        deadline = time.monotonic() + 120
        while container.attrs["State"]["Health"]["Status"] != "healthy" and time.monotonic() < deadline:
            time.sleep(2)
            container.reload()
        assert container.attrs["State"]["Health"]["Status"] == "healthy"

        data = tmp_path / "eval.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in ticket_rows[:8]))
        ab = subprocess.run(
            [
                sys.executable,
                "-m",
                "tuneship.entrypoints.cli",
                "ab",
                "--endpoint",
                f"http://127.0.0.1:{port}/v1",
                "--base",
                "tiny-base",
                "--adapter",
                "tiny-adapter",
                "--data",
                str(data),
                "--out",
                str(tmp_path / "ab"),
                "--max-tokens",
                "16",
                "--latency-requests",
                "4",
                "--concurrency",
                "4",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert ab.returncode == 0, ab.stdout + ab.stderr
        results = json.loads((tmp_path / "ab" / "results.json").read_text())
        assert results["items"] == 8 and results["latency"]["tiny-adapter"]["failed"] == 0
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=90) == 0
    finally:
        if cli.poll() is None:
            cli.kill()
    assert client.containers.list(all=True) == [], "the container is stopped and removed"
