"""Where a job's ``tuneship train`` runs: a local process group (default) or a job on a Ray cluster.

Either way the worker sees a :class:`Run` that it polls, stops and reads the output of, and the
run writes its artifacts into the job's directory: on Ray the cluster's nodes must see the
service's ``--home`` at the same path (shared storage such as NFS), because the worker watches
the run's metrics and checkpoints there and publishes the adapter from there. Nothing is uploaded.
"""

from __future__ import annotations

import itertools
import logging
import os
import shlex
import signal
import time
from collections.abc import Collection
from pathlib import Path
from typing import Protocol

from tuneship.entrypoints.service.config import ServiceConfig
from tuneship.entrypoints.service.db import Job
from tuneship.entrypoints.service.process import ProcessGroup, group_alive, kill_group

log = logging.getLogger(__name__)

LOG_EVERY = 5.0  # seconds between copies of a Ray job's logs into the job's output log
LOST_AFTER = 60.0  # seconds a Ray cluster may not answer before its run counts as lost
STOP_TIMEOUT = 60.0  # seconds to wait for a stopped Ray job (Ray's SIGKILL comes after 3 s)
# The settings a run on another node needs to resolve models as the service does (never its keys).
FORWARD = ("TUNESHIP_HOME", "HF_", "TRANSFORMERS_")


class Run(Protocol):
    """A started training run: a local process group or a Ray job."""

    @property
    def pid(self) -> int | None:
        """The local process group's id (None on Ray: :func:`submission_id` names the job there)."""

    def poll(self) -> int | None:
        """The exit code (negative when it was killed or lost), or None while it runs."""

    def stop(self) -> None:
        """End the run and whatever it started; returns once it is gone."""

    def log_lines(self, last: int = 40) -> list[str]:
        """The last lines of its output."""


class Executor(Protocol):
    """Starts a job's training runs and stops the runs of jobs whose worker is gone."""

    def start(self, job: Job, args: list[str], job_dir: Path, log: Path) -> Run:
        """Start ``args`` (a ``tuneship train`` command) in ``job_dir``, its output in ``log``."""

    def stop_orphan(self, job: Job) -> None:
        """Stop what is left of a running job whose worker is gone (at a start, or a stale heartbeat)."""


class LocalExecutor:
    """Training as a subprocess of the service, in a process group of its own."""

    def start(self, job: Job, args: list[str], job_dir: Path, log: Path) -> Run:
        return ProcessGroup(args, log, cwd=job_dir, env={**os.environ, "NO_COLOR": "1"})

    def stop_orphan(self, job: Job) -> None:
        if job.pid and group_alive(job.pid) and _runs_job(job.pid, job.id):
            kill_group(job.pid)


def _runs_job(pid: int, job_id: str) -> bool:
    """Whether process ``pid`` is this job's training (a pid may have been reused since)."""
    try:
        return job_id in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def submission_id(job: Job, taken: Collection[str] = ()) -> str:
    """The Ray job of a job's attempt: ``tuneship-JOB-ATTEMPT``, then ``-2``, ``-3`` ... when earlier
    runs with that attempt number (a paused job, a stopped service: uncounted) hold the name."""
    base = f"tuneship-{job.id}-{job.attempts}"
    names = (base if n == 1 else f"{base}-{n}" for n in itertools.count(1))
    return next(name for name in names if name not in taken)


def exit_code(status: str, driver_exit_code: int | None) -> int | None:
    """A Ray job's status as a process's exit code, as the worker reads one.

    None while pending or running; 0 on success; the command's own code when it failed; negative
    (a signal) when it was stopped (by us or a person) or lost without an exit code (its node or
    its supervisor died), so that the worker queues the job again as it does a killed process.
    """
    if status in ("PENDING", "RUNNING"):
        return None
    if status == "SUCCEEDED":
        return 0
    if status == "STOPPED":
        return -signal.SIGTERM
    return -signal.SIGKILL if driver_exit_code is None else driver_exit_code


class RayExecutor:
    """Training as a job on a Ray cluster, through Ray's job submission API (the dashboard's URL).

    The entrypoint is the same ``tuneship train`` command with the same Python, so every node
    needs tuneship installed at the service's ``sys.executable`` and the service's home at the
    same path; no runtime environment is built (no pip, no working_dir upload).
    """

    def __init__(self, address: str, num_cpus: float = 1.0, num_gpus: float = 0.0) -> None:
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus
        self._client = None

    @property
    def client(self):
        """The job submission client (connected on first use: ray imports take a second)."""
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            self._client = JobSubmissionClient(self.address)
        return self._client

    def start(self, job: Job, args: list[str], job_dir: Path, log: Path) -> Run:
        run_id = submission_id(job, {ray_job.submission_id for ray_job in self._runs_of(job)})
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARD) and "TOKEN" not in k}
        self.client.submit_job(
            entrypoint=f"cd {shlex.quote(str(job_dir))} && exec {shlex.join(args)}",
            submission_id=run_id,
            entrypoint_num_cpus=self.num_cpus,
            entrypoint_num_gpus=self.num_gpus,
            runtime_env={"env_vars": {**env, "NO_COLOR": "1"}},
            metadata={"tuneship_job": job.id, "attempt": str(job.attempts)},
        )
        return RayRun(self.client, run_id, log)

    def stop_orphan(self, job: Job) -> None:
        if job.pid:  # run locally before the service was switched to Ray
            LocalExecutor().stop_orphan(job)
            return
        try:
            for ray_job in self._runs_of(job):
                if not ray_job.status.is_terminal():
                    _stop(self.client, ray_job.submission_id)
        except Exception as e:  # noqa: BLE001 -- no cluster (it ended its jobs) or one that fails
            log.warning("Ray jobs of %s not stopped: %s", job.id, e)

    def _runs_of(self, job: Job) -> list:
        """The Ray jobs this service submitted for ``job`` (by their metadata)."""
        return [j for j in self.client.list_jobs() if (j.metadata or {}).get("tuneship_job") == job.id]


def _stop(client, run_id: str) -> None:
    """Ask Ray to stop a job (SIGTERM, then SIGKILL) and wait until it is over."""
    client.stop_job(run_id)
    deadline = time.monotonic() + STOP_TIMEOUT
    while not client.get_job_status(run_id).is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)


class RayRun:
    """One Ray job; its logs are copied into the job's output log as it runs."""

    pid = None

    def __init__(self, client, run_id: str, log: Path) -> None:
        self.client, self.id, self.log = client, run_id, log
        self._copied = 0  # characters of Ray's log already in ``log``
        self._copied_at = 0.0
        self._answered = time.monotonic()

    def poll(self) -> int | None:
        try:
            info = self.client.get_job_info(self.id)
        except Exception:  # noqa: BLE001 -- the cluster does not answer: lost once it stays silent
            if time.monotonic() - self._answered > LOST_AFTER:
                return -signal.SIGKILL
            return None
        self._answered = time.monotonic()
        code = exit_code(str(info.status.value), info.driver_exit_code)
        if code is not None or time.monotonic() - self._copied_at > LOG_EVERY:
            self._copy_logs()
        return code

    def stop(self, grace: float = 10.0) -> None:
        try:
            _stop(self.client, self.id)
            self._copy_logs()
        except Exception as e:  # noqa: BLE001 -- a cluster that is gone stopped its jobs
            log.warning("Ray job %s not stopped: %s", self.id, e)

    def log_lines(self, last: int = 40) -> list[str]:
        self._copy_logs()
        return self._logs().splitlines()[-last:]

    def _logs(self) -> str:
        try:
            return self.client.get_job_logs(self.id)
        except Exception:  # noqa: BLE001 -- logs are a help, never the reason a job fails
            return ""

    def _copy_logs(self) -> None:
        text = self._logs()
        if len(text) > self._copied:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with self.log.open("a") as out:
                out.write(text[self._copied :])
            self._copied = len(text)
        self._copied_at = time.monotonic()


def executor_from(config: ServiceConfig) -> Executor:
    """The executor the settings name."""
    if config.executor == "ray":
        return RayExecutor(config.ray_address, config.ray_cpus, config.ray_gpus)
    return LocalExecutor()
