"""The service process: records, the managed vLLM, the preflight, the workers, and the HTTP server.

:class:`Service` owns every part it starts and stops them all (:meth:`Service.stop`): the
workers stop their training process groups, then vLLM's group is stopped. :func:`run` serves
until SIGTERM or Ctrl-C; uvicorn's graceful shutdown runs the app's lifespan, which calls
:meth:`Service.stop`, so the process leaves nothing behind.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import signal
import socket
import threading
import time

from tuneship.artifacts import write_yaml
from tuneship.entrypoints.service.canary import CanarySettings, Scheduler, check
from tuneship.entrypoints.service.capture import Recorder
from tuneship.entrypoints.service.config import Paths, ServiceConfig, backend_address
from tuneship.entrypoints.service.db import connect, sessions
from tuneship.entrypoints.service.evaluation import Evaluator
from tuneship.entrypoints.service.executor import executor_from
from tuneship.entrypoints.service.files import FileStore, Preflight
from tuneship.entrypoints.service.jobs import JobStore
from tuneship.entrypoints.service.keys import KeyRing
from tuneship.entrypoints.service.metrics import Monitor
from tuneship.entrypoints.service.plan import service_defaults
from tuneship.entrypoints.service.process import group_alive
from tuneship.entrypoints.service.proxy import Backend, Router
from tuneship.entrypoints.service.redaction import Redactor
from tuneship.entrypoints.service.routing import AliasTable
from tuneship.entrypoints.service.worker import STALE_AFTER, Publisher, Worker, recover
from tuneship.errors import ServerError, TuneshipError
from tuneship.serve.config import ServeConfig
from tuneship.serve.server import VLLMServer

log = logging.getLogger(__name__)


def free_port() -> int:
    """A port nothing listens on now (for the managed vLLM)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """Every part of one service process, built from its settings; :meth:`start` and :meth:`stop` them."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.paths = Paths.of(config)
        self.defaults = service_defaults(config.train_settings, config.base)
        if self.defaults.lora_r > config.max_lora_rank:
            raise TuneshipError(
                f"train setting lora_r={self.defaults.lora_r} is above --max-lora-rank {config.max_lora_rank}"
            )
        self.engine = connect(self.paths.database_url(config))
        self.sessions = sessions(self.engine)
        # One service per SQLite file; on a server database, replicas share the jobs: a running job
        # is another replica's until its heartbeat is stale.
        self.stale_after = None if self.engine.dialect.name == "sqlite" else STALE_AFTER
        self.keys = KeyRing(self.sessions)
        self._internal_key = secrets.token_urlsafe(32)  # between the front door and vLLM only
        self.vllm = VLLMServer(self._serve_config())
        self.base_name = self.vllm.served_names[0]
        self.files = FileStore(self.sessions, self.paths)
        self.jobs = JobStore(self.sessions, self.paths, self.files, self.base_name, self.defaults)
        backend = Backend(self.vllm.url.removesuffix("/v1"), self._internal_key, managed=True)
        remote = [Backend(*backend_address(spec)) for spec in config.backends]  # --backend URL
        self.router = Router([backend, *remote], self.jobs.fine_tuned, self.paths.registry, self.base_name)
        self.aliases = AliasTable(self.paths.registry, self.sessions)  # aliases, rollouts: versions
        self.monitor = Monitor(self.sessions)  # counts inference requests (/metrics, request records)
        redactor = Redactor(config.capture_redact_patterns, config.capture_redact_hook)
        self.recorder = Recorder(self.sessions, redactor)  # captured traffic of opted-in aliases
        self.stop_event = threading.Event()
        self.kick = threading.Event()
        self.ready = threading.Event()
        self.preflight = Preflight(self.sessions, self.paths, self.stop_event)
        publisher = Publisher(
            self.paths.registry,
            str(self.vllm.base.path),
            self._ready_url,
            self._internal_key,
        )
        self.executor = executor_from(config)  # training here, or on a Ray cluster
        evaluator = Evaluator(self._ready_url, self._internal_key, self.base_name, self.stop_event)
        self.workers = [
            Worker(i, self.jobs, self.files, publisher, config.max_attempts, self.stop_event, self.kick,
                   self.router.refresh, self.stale_after, evaluator if config.job_reports else None,
                   executor=self.executor)
            for i in range(config.workers)
        ]  # fmt: skip
        self._watcher = threading.Thread(target=self._watch_vllm, name="tuneship-vllm-watch", daemon=True)
        self.canary = self._canary() if config.monitor_every else None  # --monitor-every: its own checks

    def _canary(self) -> Scheduler:
        """Canary evaluations of the live aliases every ``monitor_every`` minutes, through this
        service's own front door, with a key known to this process only."""
        c = self.config
        key = secrets.token_urlsafe(32)
        self.keys.allow(key, "user")
        host = "127.0.0.1" if c.host in ("0.0.0.0", "::") else c.host
        endpoint = f"http://{f'[{host}]' if ':' in host else host}:{c.port}/v1"
        settings = CanarySettings(
            eval_file=c.monitor_eval,
            limit=c.monitor_limit,
            min_score=c.monitor_min_score,
            max_latency_ms=c.monitor_max_latency_ms,
            webhook=c.monitor_webhook or None,
        )
        run = functools.partial(check, settings, endpoint, key, self.paths.registry, self.sessions)
        return Scheduler(run, c.monitor_every * 60, self.ready, self.stop_event)

    def _ready_url(self) -> str | None:
        """The managed vLLM's /v1 URL once it answers (None before)."""
        return self.vllm.url if self.ready.is_set() else None

    @property
    def model_names(self) -> tuple[str, ...]:
        """Names a job's ``model`` may give for the base."""
        return (self.base_name, self.config.base)

    @property
    def _vllm_log(self) -> str:
        """``vllm.log``; replicas sharing a home directory each write their own."""
        if self.stale_after is None:
            return "vllm.log"
        return f"vllm-{socket.gethostname()}-{self.config.port}.log"

    def _serve_config(self) -> ServeConfig:
        return ServeConfig(
            base=self.config.base,
            served_name=self.config.served_name,
            registry=str(self.paths.registry),
            api_key=self._internal_key,
            port=self.config.vllm_port or free_port(),
            kv_cache_gb=self.config.kv_cache_gb,
            max_model_len=self.config.max_model_len,
            max_loras=self.config.max_loras,
            max_lora_rank=self.config.max_lora_rank,
            eager=self.config.eager,
            log_file=str(self.paths.logs / self._vllm_log),
            startup_timeout=self.config.startup_timeout,
        )

    def start(self) -> None:
        """Recover what a previous run left, then start vLLM, the preflight and the workers."""
        defaults = self.defaults.model_dump(mode="json", exclude={"data"})
        write_yaml(self.paths.train_defaults, defaults)
        recover(self.jobs, self.config.max_attempts, self.stale_after, self.executor)
        self.preflight.recover()
        self.router.refresh()
        self.vllm.start()
        self.monitor.start()
        self.recorder.start()
        self._watcher.start()
        self.preflight.start()
        if self.canary is not None:
            self.canary.start()
            log.info("Canary: %s against every live alias every %g min", self.config.monitor_eval,
                     self.config.monitor_every)  # fmt: skip
        for worker in self.workers:
            worker.start()
        log.info("Records: %s; files, jobs and registry in %s", self.engine.url, self.paths.root)
        log.info("Starting vLLM for %s (log: %s) ...", self.base_name, self.vllm.log_path)
        for backend in self.router.backends[1:]:
            log.info("Backend %s: its models are served here too (listed from its /v1/models)", backend.url)

    def _watch_vllm(self) -> None:
        """Wait until vLLM answers; if it exits by itself, stop the whole service (one clear line)."""
        try:
            self.vllm.wait_ready()
        except ServerError as e:
            if not self.stop_event.is_set():
                log.error("The model server failed: %s", e)
                os.kill(os.getpid(), signal.SIGTERM)
            return
        self.ready.set()
        log.info("Ready: %s answers for %s and its fine-tuned models", self.vllm.url, self.base_name)
        code = self.vllm.wait()
        if not self.stop_event.is_set():
            log.error("The model server exited with code %s:\n%s", code, self.vllm.log_tail())
            os.kill(os.getpid(), signal.SIGTERM)

    def stop(self) -> None:
        """Stop the workers (and their training processes), the preflight, then vLLM; close the records."""
        self.stop_event.set()
        self.kick.set()
        self.preflight.kick.set()
        for worker in self.workers:
            if worker.is_alive():
                worker.join(timeout=60)
        if self.preflight.is_alive():
            self.preflight.join(timeout=30)
        if self.canary is not None and self.canary.is_alive():
            self.canary.join(timeout=30)  # a check under way finishes (its requests are short)
        if self.vllm.process is not None:
            group = self.vllm.process.pid
            self.vllm.stop()
            # A killed engine worker can take a while to free its memory on a busy host: wait for
            # its last process, so that nothing this service started outlives it.
            deadline = time.monotonic() + 60
            while group_alive(group) and time.monotonic() < deadline:
                time.sleep(0.2)
        self.monitor.stop()
        self.recorder.stop()
        self.engine.dispose()


def run(config: ServiceConfig) -> None:
    """Serve until SIGTERM or Ctrl-C; everything started is stopped before this returns."""
    import uvicorn

    from tuneship.entrypoints.service.app import create_app

    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host, config.port)) == 0:
            raise ServerError(f"port {config.port} on {config.host} is already in use; pick --port")
    service = Service(config)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(service),
            host=config.host,
            port=config.port,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
    )
    log.info("tuneship service on http://%s:%d/v1", config.host, config.port)
    server.run()
