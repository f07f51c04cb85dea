"""One real `tuneship service` per test module: a subprocess on the tiny base, driven by the openai SDK.

Starting it costs a vLLM start (about a minute on 2 cores), so a module shares one; tests that
need the model server wait for it (:meth:`Service.wait_ready`), the others run while it starts.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest
from helpers import CLI, free_port, write_rows

# Short, strong runs on the tiny base: a few steps that clearly change its answers.
TRAIN_SETTINGS = {
    "precision": "fp32",
    "max_length": "160",
    "lora_r": "8",
    "lora_alpha": "16",
    "learning_rate": "0.01",
    "logging_steps": "1",
}


class Service:
    """A `tuneship service` subprocess with its home, port and keys."""

    def __init__(self, home: Path, base: Path, log: Path, upload_limit_mb: float = 1.0) -> None:
        self.home, self.base, self.log = home, base, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.upload_limit_mb = upload_limit_mb
        self.process: subprocess.Popen | None = None
        self.admin_key = self.create_key("admin", "admin")
        self.user_key = self.create_key("someone", "user")

    def create_key(self, name: str, role: str) -> str:
        args = [*CLI, "service", "keys", "create", "--name", name, "--role", role, "--home", str(self.home)]
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()

    def start(self) -> None:
        args = [
            *CLI, "service", "--home", str(self.home), "--base", str(self.base), "--served-name", "tiny-base",
            "--port", str(self.port), "--kv-cache-gb", "1", "--max-model-len", "512",
            "--upload-limit-mb", str(self.upload_limit_mb), "--max-loras", "2",
        ]  # fmt: skip
        for name, value in TRAIN_SETTINGS.items():
            args += ["--train-setting", f"{name}={value}"]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        self._wait(lambda: self._status("/health") in (200, 503), "the API to answer", 180)

    def _status(self, path: str) -> int | None:
        try:
            return httpx.get(self.url.removesuffix("/v1") + path, timeout=5).status_code
        except httpx.HTTPError:
            return None

    def _wait(self, ready, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.log.read_text()[-3000:]
            if ready():
                return
            time.sleep(1)
        raise AssertionError(f"no {what} after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def wait_ready(self) -> None:
        """Until the managed vLLM answers through the front door."""
        self._wait(lambda: self._status("/health") == 200, "model server", 400)

    def descendants(self) -> list[psutil.Process]:
        assert self.process is not None
        return psutil.Process(self.process.pid).children(recursive=True)

    def stop(self) -> list[psutil.Process]:
        """SIGTERM, wait for the exit; the processes it had started (all should be gone)."""
        assert self.process is not None
        started = self.descendants()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=120)
        assert code == 0, self.log.read_text()[-3000:]
        self.process = None
        return [p for p in started if _alive(p)]

    def client(self, key: str | None = None):
        from openai import OpenAI

        return OpenAI(base_url=self.url, api_key=key or self.admin_key, max_retries=0, timeout=120)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def service(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory):
    """A running service for the module (stopped, with a check that nothing is left, at its end)."""
    work = tmp_path_factory.mktemp("service")
    running = Service(work / "home", tiny_base, work / "service.log")
    running.start()
    yield running
    if running.process is not None:
        assert running.stop() == []


@pytest.fixture(scope="module")
def train_file(ticket_rows: list[dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 ticket conversations: 8 steps an epoch at the service's batch size."""
    return write_rows(tmp_path_factory.mktemp("data") / "train.jsonl", ticket_rows[:64])
