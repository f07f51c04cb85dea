"""The service's settings: one pydantic model (the command's flags come from it) and its directories."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from tuneship.config import Settings, refuse
from tuneship.models import cache_home

# Training settings that belong to a job, not to the service.
JOB_OWNED = ("data", "eval_data", "name", "runs_dir", "base", "seed", "epochs", "max_steps")


class ServiceConfig(Settings):
    """Settings of one service process: HTTP front door, records, training workers, managed vLLM."""

    host: str = Field("127.0.0.1", description="interface to bind")
    port: int = Field(8000, ge=1, le=65535, description="port of the API and the inference front door")
    home: str = Field(
        "", description="directory of the service's database, files, jobs and registry "
        "(default: TUNESHIP_HOME/service)"
    )  # fmt: skip
    database_url: str = Field(
        "",
        description="SQLAlchemy URL of the records (default: sqlite:///HOME/tuneship.db; "
        "postgresql+psycopg://... for a team deployment)",
    )
    base: str = Field("default", description="base model: 'default', a model directory or a hub id")
    served_name: str = Field("", description="name the base model is served and fine-tuned under")
    upload_limit_mb: float = Field(512.0, gt=0, description="largest file upload in MiB (413 beyond it)")
    workers: int = Field(1, ge=0, description="training jobs run at once by this process (0: none)")
    max_attempts: int = Field(3, ge=1, description="runs of one job before it fails (a lost worker retries)")
    executor: Literal["local", "ray"] = Field(
        "local", description="where jobs train: a subprocess of this service, or a job on a Ray cluster"
    )
    ray_address: str = Field(
        "", description="executor=ray: the Ray dashboard's URL (job submission), e.g. http://HEAD:8265"
    )
    ray_cpus: float = Field(1.0, ge=0, description="executor=ray: CPUs each job's training reserves")
    ray_gpus: float = Field(
        0.0, ge=0, description="executor=ray: GPUs each job's training reserves (0: it trains on CPU)"
    )
    train_settings: dict[str, str] = Field(
        default_factory=dict,
        description="training setting applied to every job (repeatable), e.g. precision=fp32",
    )
    job_reports: bool = Field(
        True, description="with a validation file, A/B the job's model against the base (tuneship ab) "
        "and check its fidelity (tuneship verify); the reports become result files"
    )  # fmt: skip
    kv_cache_gb: int = Field(2, ge=1, description="CPU only: GiB of KV cache of the managed vLLM")
    max_model_len: int = Field(0, ge=0, description="maximum tokens per request (0: the model's context)")
    max_loras: int = Field(4, ge=1, description="adapters the managed vLLM holds at once")
    max_lora_rank: int = Field(16, ge=1, description="largest adapter rank the managed vLLM accepts")
    eager: bool = Field(False, description="start vLLM without its torch.compile warm-up (--enforce-eager)")
    vllm_port: int = Field(0, ge=0, le=65535, description="port of the managed vLLM on 127.0.0.1 (0: free)")
    startup_timeout: float = Field(600.0, gt=0, description="seconds to wait for vLLM to become ready")
    backends: list[str] = Field(
        default_factory=list,
        description="an OpenAI-compatible server this service did not start (repeatable): URL, or "
        "URL#ENVVAR to send the key in that environment variable; requests for a model it lists go to it",
    )
    monitor_every: float = Field(
        0.0, ge=0, description="minutes between canary evaluations of every live alias (0: none; "
        "tuneship monitor)"
    )  # fmt: skip
    monitor_eval: str = Field("", description="canary eval set (tuneship eval's formats) for monitor_every")
    monitor_limit: int = Field(20, ge=1, description="canary: first N items of the eval set per alias")
    monitor_min_score: float | None = Field(None, description="canary: alert below this primary score")
    monitor_max_latency_ms: float | None = Field(
        None, gt=0, description="canary: alert above this latency p95 (ms)"
    )
    monitor_webhook: str = Field("", description="canary: URL each alert is POSTed to as JSON")
    capture_redact_patterns: list[str] = Field(
        default_factory=list,
        description="captured traffic: a regular expression whose matches are stored as [REDACTED] "
        "(repeatable; emails, phone and card numbers are always masked)",
    )
    capture_redact_hook: str = Field(
        "", description="captured traffic: module:function that takes a text and returns it redacted "
        "(run after the built-in masks)"
    )  # fmt: skip

    @field_validator("train_settings")
    @classmethod
    def _job_owned(cls, settings: dict[str, str]) -> dict[str, str]:
        owned = sorted(set(settings) & set(JOB_OWNED))
        if owned:
            raise ValueError(f"{', '.join(owned)}: set by each job, not by the service")
        return settings

    @field_validator("backends")
    @classmethod
    def _backend_urls(cls, backends: list[str]) -> list[str]:
        refuse([p for p in (backend_problem(b) for b in backends) if p])
        return backends

    @model_validator(mode="after")
    def _consistent(self) -> ServiceConfig:
        problems = []
        if self.vllm_port and self.vllm_port == self.port:
            problems.append("vllm_port: the managed vLLM needs a port of its own")
        if self.executor == "ray" and not self.ray_address:
            problems.append("ray_address: executor=ray needs the Ray dashboard's URL (http://HEAD:8265)")
        if self.monitor_every and not self.monitor_eval:
            problems.append("monitor_eval: monitor_every needs a canary eval set")
        refuse(problems)
        return self

    @property
    def upload_limit(self) -> int:
        """The upload limit in bytes."""
        return int(self.upload_limit_mb * 1024 * 1024)


def backend_problem(spec: str) -> str | None:
    """What is wrong with a ``--backend`` value (``URL`` or ``URL#ENVVAR``), or None."""
    url, _, envvar = spec.partition("#")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"backend {spec!r}: not an http(s) URL such as http://HOST:8000"
    try:
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        return f"backend {spec!r}: bad port"
    if parts.query or parts.path.rstrip("/") not in ("", "/v1"):
        return f"backend {spec!r}: give the server's root URL (http://HOST:PORT or .../v1), nothing else"
    if envvar and not envvar.isidentifier():
        return f"backend {spec!r}: {envvar!r} after '#' is not an environment variable's name"
    if envvar and not os.environ.get(envvar):
        return f"backend {spec!r}: the environment variable {envvar} (its API key) is not set"
    return None


def backend_address(spec: str) -> tuple[str, str | None]:
    """A validated ``--backend`` value's root URL (no ``/v1``) and API key (from its ``#ENVVAR``)."""
    url, _, envvar = spec.partition("#")
    return url.rstrip("/").removesuffix("/v1"), os.environ[envvar] if envvar else None


@dataclass(frozen=True)
class Paths:
    """Where one service keeps its state (all under ``root``)."""

    root: Path

    @classmethod
    def of(cls, config: ServiceConfig) -> Paths:
        """The directories of ``config`` (created)."""
        paths = cls(Path(config.home or cache_home() / "service").resolve())
        for folder in (paths.root, paths.files, paths.jobs, paths.registry, paths.logs):
            folder.mkdir(parents=True, exist_ok=True)
        return paths

    def database_url(self, config: ServiceConfig) -> str:
        """The configured URL, else a SQLite file under the home directory."""
        return config.database_url or f"sqlite:///{self.root / 'tuneship.db'}"

    @property
    def files(self) -> Path:
        return self.root / "files"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def train_defaults(self) -> Path:
        """The service's training settings as a YAML file (``tuneship data check --config`` reads it)."""
        return self.root / "train-defaults.yaml"
