"""Launch vLLM's OpenAI-compatible server for a base model plus LoRA adapters.

    tuneship serve --adapter tickets=runs/tickets/adapter
    tuneship serve --registry registry --api-key KEY     # the registry's aliases; hot loading on
    tuneship serve --merged exports/tickets              # a merged export, no adapters

check every adapter (export's adapter check) -> derive vLLM flags -> start
``python -m vllm.entrypoints.openai.api_server`` in its own process group -> wait
until ``/v1/models`` answers -> serve until Ctrl-C/SIGTERM -> stop the whole group.
A registry's aliases and hot loading (registry + API key) go through :mod:`tuneship.serve.guard`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tuneship.adapters import adapter_hash, fitting_max_lora_rank
from tuneship.artifacts import MANIFEST
from tuneship.determinism import BATCH_INVARIANT_ENV
from tuneship.errors import ArtifactError, ServerError, TuneshipError
from tuneship.models import ResolvedBase, resolve_base
from tuneship.serve.capacity import (
    AUTO_MAX_MODEL_LEN,
    check_max_model_len,
    context_note,
    lora_slots,
    model_context,
    slots_note,
)
from tuneship.serve.config import ServeConfig
from tuneship.serve.engine import MERGED_SPEEDUP, engine_notes, serving_dtype
from tuneship.serve.guard import (
    BASE_PATH_ENV,
    BASE_SHA_ENV,
    LIVE_ENV,
    MAX_RANK_ENV,
    REGISTRY_ENV,
    SERVED_NAME_ENV,
    TEMPLATE_SHA_ENV,
)
from tuneship.serve.info import MIDDLEWARE as INFO_MIDDLEWARE
from tuneship.serve.info import check_deterministic
from tuneship.serve.registry import Registry, check_served
from tuneship.serve.stopping import plan_stopping
from tuneship.serve.templates import applied_chat_template, served_chat_template

# Engine settings a user's own environment may override.
CPU_DEFAULTS = ("VLLM_CPU_KVCACHE_SPACE", "HF_HUB_OFFLINE", "VLLM_NO_USAGE_STATS", "DO_NOT_TRACK")
# Measured with bench/serve_throughput.py (see the README); the serve command repeats it.


def has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def max_lora_rank(config: ServeConfig, ranks: dict[str, int]) -> int:
    """The configured limit, else the smallest allowed value holding every adapter (16 if none)."""
    if config.max_lora_rank:
        return config.max_lora_rank
    return fitting_max_lora_rank(max(ranks.values())) if ranks else 16


def build_vllm_args(
    config: ServeConfig,
    base: ResolvedBase,
    adapters: dict[str, str],
    ranks: dict[str, int],
    gpu: bool,
    python: str = sys.executable,
    model_path: str | None = None,
    host: str | None = None,
    port: int | None = None,
    chat_template: str | None = None,
    generation_config: str = "auto",
) -> list[str]:
    """The command line that starts vLLM for this configuration (the API key goes in the environment).

    ``adapters`` maps names to the paths vLLM will see; ``chat_template``, the path of the template
    file vLLM applies instead of the base's own; ``generation_config``, vLLM's ``--generation-config``
    (see :mod:`tuneship.serve.stopping`); the keyword arguments override what differs in a container.
    """
    args = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model_path or str(base.path),
        "--served-model-name",
        config.served_name or base.name,
        "--host",
        host or config.host,
        "--port",
        str(port or config.port),
        "--max-model-len",
        str(config.max_model_len or AUTO_MAX_MODEL_LEN),
        "--generation-config",
        generation_config,
    ]
    if gpu:
        args += [
            "--gpu-memory-utilization",
            str(config.gpu_memory_utilization),
            "--tensor-parallel-size",
            str(config.tensor_parallel_size),
        ]
    if adapters or config.hot_loading:
        args += [
            "--enable-lora",
            "--max-lora-rank",
            str(max_lora_rank(config, ranks)),
            "--max-loras",
            str(lora_slots(config.max_loras, len(adapters))),
        ]
    if adapters:
        args += ["--lora-modules", *(f"{name}={path}" for name, path in adapters.items())]
    if config.registry:  # aliases to versions; with an API key, guarded hot loading
        args += ["--middleware", "tuneship.serve.guard.RegistryGuard"]
    args += ["--middleware", INFO_MIDDLEWARE]  # GET /v1/tuneship/server: is inference deterministic?
    if chat_template:
        args += ["--chat-template", chat_template]
    if config.eager:
        args.append("--enforce-eager")
    dtype = serving_dtype(config.dtype, gpu)
    if dtype and not any(a.split("=")[0] == "--dtype" for a in config.extra_args):
        args += ["--dtype", dtype]
    return args + list(config.extra_args)


class VLLMServer:
    """A vLLM server process group: start, wait until ready, stop everything it started."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        if config.merged and not (Path(config.merged) / MANIFEST).is_file():
            raise TuneshipError(
                f"{config.merged}: not a tuneship export (no {MANIFEST}); use --base for a model"
            )
        self.base = resolve_base(config.merged or config.base)
        self.adapters = dict(config.adapters)
        registry = Registry(config.registry) if config.registry else None
        for entry in registry.served() if registry else []:
            if entry.name in self.adapters:
                raise TuneshipError(f"adapter {entry.name!r} is given by --adapter and in the registry")
            self.adapters[entry.name] = str(entry.path)
        shadowed = sorted(set(config.adapters) & set(registry.aliases() if registry else {}))
        if shadowed:  # the guard would answer requests for it with the alias's version
            raise TuneshipError(
                f"adapter {shadowed[0]!r} is given by --adapter and is an alias in the registry"
            )
        self.reports = check_served(self.adapters, self.base, config.served_name or self.base.name)
        self.ranks = {name: report.rank for name, report in self.reports.items() if report.rank}
        try:  # vLLM applies one chat template per server: the adapters' own, or refuse
            self.chat_template = served_chat_template(config, self.base, self.adapters)
        except ArtifactError as e:
            raise TuneshipError(f"refusing to serve: {e}") from None
        self.context = model_context(self.base.path)
        check_max_model_len(config.max_model_len, self.context)
        template_text = applied_chat_template(config, self.base, self.chat_template)
        self.stopping = plan_stopping(self.base.path, template_text, config.served_name or self.base.name)
        self.gpu = has_cuda()
        self.determinism = check_deterministic(config.deterministic)  # refused where vLLM has none
        local_paths = {name: str(Path(path).resolve()) for name, path in self.adapters.items()}
        template = self.chat_template.file
        self.args = build_vllm_args(
            config,
            self.base,
            local_paths,
            self.ranks,
            self.gpu,
            chat_template=str(template.resolve()) if template else None,
            generation_config=self.stopping.vllm_value,
        )
        self.log_path = Path(config.log_file or f"logs/vllm-{config.port}.log")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "::") else self.config.host
        return f"http://{host}:{self.config.port}/v1"

    @property
    def served_names(self) -> list[str]:
        return [self.config.served_name or self.base.name, *self.adapters]

    def notes(self) -> list[str]:
        """What a user should know about this server beyond its names."""
        served = self._served_max_model_len() if self.process is not None else None
        notes = [self.chat_template.describe(), context_note(self.config.max_model_len, self.context, served)]
        slots = slots_note(self.config.max_loras, len(self.adapters), self.config.hot_loading)
        notes += [n for n in (self.stopping.note, slots) if n]
        notes.append(f"Inference: {self.determinism.describe()}")
        notes += engine_notes(self.config.dtype, self.gpu, bool(self.adapters) or self.config.hot_loading)
        notes += [f"Adapter {name}: {note}" for name, r in self.reports.items() for note in r.notes]
        if self.config.registry:
            notes.append(self._aliases_note())
        if self.config.hot_loading:
            notes.append(f"Hot loading: on, from {self.config.registry} only (tuneship adapters load NAME)")
        elif self.config.registry:
            notes.append("Hot loading: off (it needs an API key: --api-key or TUNESHIP_API_KEY)")
        if len(self.adapters) == 1:
            notes.append(f"Serving one adapter: a merged export is faster. {MERGED_SPEEDUP}")
        return notes

    def _aliases_note(self) -> str:
        aliases = Registry(self.config.registry).aliases()
        named = ", ".join(f"{alias} -> {version}" for alias, version in sorted(aliases.items())) or "none"
        later = "load on first request" if self.config.hot_loading else "are not served (no API key)"
        return f"Aliases: {named} (a request for an alias is answered by its version; other versions {later})"

    def _served_max_model_len(self) -> int | None:
        """The base's max_model_len as the live server reports it (vLLM may fit it to the KV cache)."""
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        try:
            models = httpx.get(f"{self.url}/models", headers=headers, timeout=5).json()["data"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None
        return next((m.get("max_model_len") for m in models if m.get("id") == self.served_names[0]), None)

    def environment(self) -> dict[str, str]:
        """This process's environment, cleaned, plus :meth:`engine_environment`."""
        env = dict(os.environ)
        # vLLM's own runtime loading and filesystem resolver accept any path: never inherit them.
        for unsafe in ("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "VLLM_LORA_RESOLVER_CACHE_DIR", "VLLM_API_KEY"):
            env.pop(unsafe, None)
        for key, value in self.engine_environment().items():
            if key not in CPU_DEFAULTS or key not in env:  # the user's own engine settings win
                env[key] = value
        return env

    def engine_environment(
        self, registry_path: str | None = None, model_path: str | None = None
    ) -> dict[str, str]:
        """What the engine needs set: key, hot-loading settings, CPU cache size, offline flags.

        ``registry_path`` and ``model_path``: where the engine sees the registry and the base.
        """
        env: dict[str, str] = {}
        if self.config.api_key:
            env["VLLM_API_KEY"] = self.config.api_key  # not on the command line, where ps shows it
        if self.config.registry:  # the guard resolves aliases from it
            env[REGISTRY_ENV] = registry_path or str(Path(self.config.registry).resolve())
            env[SERVED_NAME_ENV] = self.config.served_name or self.base.name
        if self.config.hot_loading:
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
            env[BASE_SHA_ENV] = self.base.weights_sha256
            env[BASE_PATH_ENV] = model_path or str(self.base.path)  # hot loads checked against its modules
            env[MAX_RANK_ENV] = str(max_lora_rank(self.config, self.ranks))
            if self.chat_template.sha256:  # hot-loaded adapters must share it
                env[TEMPLATE_SHA_ENV] = self.chat_template.sha256
            live = {name: adapter_hash(Path(path)) for name, path in self.adapters.items()}
            env[LIVE_ENV] = json.dumps(live)
        if self.config.deterministic:
            env[BATCH_INVARIANT_ENV] = "1"
        env["VLLM_CPU_KVCACHE_SPACE"] = str(self.config.kv_cache_gb)
        env.update(HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
        return env

    def start(self) -> None:
        if _port_in_use(self.config.host, self.config.port):
            raise ServerError(f"port {self.config.port} on {self.config.host} is already in use; pick --port")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        # A new session makes the engine and all its workers one process group to stop together.
        self.process = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, env=self.environment(), start_new_session=True
        )
        log.close()

    def wait_ready(self, progress: Any = None) -> None:
        """Poll /v1/models until it answers; fail early (with the log tail) if vLLM exits."""
        deadline = time.monotonic() + self.config.startup_timeout
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        while time.monotonic() < deadline:
            code = self.exit_code()
            if code is not None:
                raise ServerError(f"vLLM exited with code {code}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/models", headers=headers, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if progress:
                progress()
            time.sleep(1)
        self.stop()
        raise ServerError(f"vLLM was not ready after {self.config.startup_timeout:.0f}s:\n{self.log_tail()}")

    def exit_code(self) -> int | None:
        """None while the engine runs."""
        assert self.process is not None, "start() first"
        return self.process.poll()

    def wait(self) -> int:
        """Block until the engine exits; its exit code."""
        assert self.process is not None, "start() first"
        return self.process.wait()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after ``timeout`` seconds."""
        if self.process is None:
            return
        pgid = self.process.pid
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            if not _group_alive(pgid):
                break
            time.sleep(0.5)
        _kill_group(pgid)
        self.process = None

    def __enter__(self) -> VLLMServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_until_stopped(
        self,
        on_ready: Callable[[VLLMServer], None] | None = None,
        on_stopping: Callable[[], None] | None = None,
    ) -> None:
        """Start, wait until ready, call ``on_ready``, then serve until Ctrl-C or SIGTERM; always stop.

        Returns when stopped by the user; raises :class:`ServerError` (with the log tail) when
        the engine exits by itself. SIGTERM is handled only when called from the main thread.
        """
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _stop_requested) if main else None
        try:
            self.start()
            self.wait_ready()
            if on_ready:
                on_ready(self)
            code = self.wait()
            raise ServerError(f"vLLM exited with code {code}:\n{self.log_tail()}")
        except (KeyboardInterrupt, _StopRequested):
            if on_stopping:
                on_stopping()
        finally:
            if main:  # a second SIGTERM must not cut the cleanup short
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self.stop()
            if main:
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


class _StopRequested(Exception):
    """SIGTERM arrived: leave the serving loop and stop the engine."""


def _stop_requested(signum: int, frame: object) -> None:
    raise _StopRequested


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _kill_group(pgid: int) -> None:
    deadline = time.monotonic() + 10
    while _group_alive(pgid) and time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.2)


def _port_in_use(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1" if host in ("0.0.0.0", "::") else host, port)) == 0
