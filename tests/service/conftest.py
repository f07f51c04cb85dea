"""One real `tuneship service` per test module: a subprocess on the tiny base, driven by the openai SDK.

Starting it costs a vLLM start (about a minute on 2 cores), so a module shares one; tests that
need the model server wait for it (:meth:`Service.wait_ready`), the others run while it starts.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from helpers import CLI, TICKETS, free_port, write_rows

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

    def __init__(
        self,
        home: Path,
        base: Path,
        log: Path,
        upload_limit_mb: float = 1.0,
        database_url: str = "",
        keys: tuple[str, str] | None = None,
        eager: bool = False,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        """``database_url`` and ``keys``: a replica of a service whose records and keys it shares;
        ``eager``: its vLLM starts without the compile warm-up (two starting at once on 2 cores);
        ``extra_args``: more `tuneship service` flags (``--executor ray ...``)."""
        self.home, self.base, self.log = home, base, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.upload_limit_mb = upload_limit_mb
        self.database_url = database_url
        self.eager = eager
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None
        self.admin_key, self.user_key = keys or (
            self.create_key("admin", "admin"),
            self.create_key("someone", "user"),
        )

    def create_key(self, name: str, role: str) -> str:
        args = [*CLI, "service", "keys", "create", "--name", name, "--role", role, "--home", str(self.home)]
        if self.database_url:
            args += ["--database-url", self.database_url]
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()

    def start(self) -> None:
        args = [
            *CLI, "service", "--home", str(self.home), "--base", str(self.base), "--served-name", "tiny-base",
            "--port", str(self.port), "--kv-cache-gb", "1", "--max-model-len", "512",
            "--upload-limit-mb", str(self.upload_limit_mb), "--max-loras", "2",
        ]  # fmt: skip
        for name, value in TRAIN_SETTINGS.items():
            args += ["--train-setting", f"{name}={value}"]
        if self.database_url:
            args += ["--database-url", self.database_url]
        if self.eager:
            args.append("--eager")
        args += self.extra_args
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


class StreamingLoad:
    """``clients`` threads streaming chat requests for ``model`` until the block ends; every answer
    is kept with its start and end times (monotonic s), finish reasons, version header and the
    ``model`` of each chunk; failures as their repr."""

    def __init__(self, service: Service, model: str, messages: list[dict], clients: int = 16) -> None:
        self.service, self.model, self.messages = service, model, messages
        self.answers: list[dict] = []
        self.failures: list[str] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def __enter__(self) -> StreamingLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=120)

    def between(self, start: float, end: float) -> list[dict]:
        """The answers that began at or after ``start`` and ended by ``end``."""
        return [a for a in self.answers if a["began"] >= start and a["ended"] <= end]

    def _client(self, i: int) -> None:
        client, n = self.service.client(self.service.user_key), 0
        while not self.stopping.is_set():
            n, began = n + 1, time.monotonic()
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model=self.model, messages=self.messages, max_tokens=12, temperature=0, stream=True,
                    user=f"load-{i}-{n}",
                )  # fmt: skip
                chunks = list(raw.parse())
                finish = [
                    c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
                ]
                self.answers.append({"began": began, "ended": time.monotonic(), "finish": finish,
                                     "header": raw.headers.get("x-tuneship-model-version"),
                                     "models": {c.model for c in chunks}})  # fmt: skip
            except Exception as e:  # noqa: BLE001 (a failed request is what the tests count)
                self.failures.append(repr(e))


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def running_service(base: Path, tmp_path_factory: pytest.TempPathFactory):
    """A service on ``base`` while the generator lives (stopped, with a check that nothing is left)."""
    work = tmp_path_factory.mktemp("service")
    running = Service(work / "home", base, work / "service.log")
    running.start()
    yield running
    if running.process is not None:
        assert running.stop() == []


@pytest.fixture(scope="module")
def service(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory):
    """A running service for the module on the tiny base."""
    yield from running_service(tiny_base, tmp_path_factory)


def wait_until_version(answered_by, version: str, alias: str, timeout: float = 10) -> None:
    """Until ``answered_by()`` (the version a request for ``alias`` got) is ``version``. The front
    door may route on a reading of aliases and rollouts up to ``TTL`` s old (and one started before
    the change), and while an aborted rollout is still read, a request may come from either version
    by chance: so first wait that reading out, then ask."""
    from tuneship.entrypoints.service.routing import TTL

    time.sleep(TTL + 0.5)
    deadline = time.monotonic() + timeout
    while answered_by() != version:
        assert time.monotonic() < deadline, f"{alias} not answered by {version} after {timeout}s"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def train_file(ticket_rows: list[dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 ticket conversations: 8 steps an epoch at the service's batch size."""
    return write_rows(tmp_path_factory.mktemp("data") / "train.jsonl", ticket_rows[:64])


@pytest.fixture(scope="module")
def validation_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 held-out ticket conversations (examples/tickets/eval.jsonl)."""
    rows = (TICKETS / "eval.jsonl").read_text().splitlines()[:12]
    path = tmp_path_factory.mktemp("data") / "valid.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


PG_BIN = Path("/usr/lib/postgresql/15/bin")  # Debian's PostgreSQL 15


def _ensure_postgresql() -> None:
    """Install Debian's ``postgresql`` package when its server binaries are missing (root, apt-get)."""
    if (PG_BIN / "pg_ctl").is_file():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail(f"no PostgreSQL server in {PG_BIN}; install Debian's postgresql package (needs root)")
    done = subprocess.run(
        ["apt-get", "install", "-y", "-q", "postgresql"], capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0 or not (PG_BIN / "pg_ctl").is_file():
        pytest.fail(f"apt-get install postgresql failed: {done.stderr[-300:]}")


def _as_postgres(command: list[str]) -> subprocess.CompletedProcess:
    """Run a server command as the ``postgres`` user (initdb refuses to run as root)."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL server in a temporary directory for the module: its SQLAlchemy URL."""
    _ensure_postgresql()
    work = Path(tempfile.mkdtemp(prefix="tspg-", dir="/tmp"))
    data, port = work / "data", free_port()
    if os.geteuid() == 0:
        shutil.chown(work, "postgres", "postgres")
    made = _as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"])
    assert made.returncode == 0, made.stderr
    options = f"-p {port} -k {work} -c listen_addresses=127.0.0.1"
    ctl = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(work / "server.log"), "-w"]
    started = _as_postgres([*ctl, "-o", options, "start"])
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        _as_postgres([*ctl, "-m", "fast", "stop"])
        shutil.rmtree(work, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on its test (``item.rep_call``): fixtures act on a failure (a screenshot)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
