"""The main flow with ``--executor ray``: jobs train as Ray jobs on a real local Ray head.

The test starts the head (``ray start --head`` with its dashboard, Ray's job server) in a
temporary directory and ends it by process id: ``ray stop`` would end every Ray process of the
user on this machine, other people's tests included. The job directory is shared storage: the
head runs on this machine, so the run writes its adapter where the service reads it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from helpers import answers_differ, free_port
from service.conftest import Service
from service.test_service import wait_for

RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module")
def ray_head():
    """A local Ray head with its job server for the module: the dashboard's URL."""
    work = Path(tempfile.mkdtemp(prefix="tsray-", dir="/tmp"))  # short: Ray's socket paths are limited
    dashboard = free_port()
    ports = {
        "--port": free_port(),
        "--dashboard-port": dashboard,
        "--ray-client-server-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--metrics-export-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
    }
    args = [RAY, "start", "--head", "--num-cpus=2", "--disable-usage-stats", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--temp-dir={work}", *(f"{k}={v}" for k, v in ports.items())]  # fmt: skip
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with (work / "start.log").open("wb") as out:
        starter = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        assert starter.wait(timeout=240) == 0, (work / "start.log").read_text()[-3000:]
        address = f"http://127.0.0.1:{dashboard}"
        _wait_for_job_server(address)
        yield address
    finally:
        assert _stop_ray(starter.pid, work) == []
        shutil.rmtree(work, ignore_errors=True)


def _wait_for_job_server(address: str, timeout: float = 120) -> None:
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout
    while True:
        try:
            JobSubmissionClient(address).list_jobs()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _stop_ray(pgid: int, work: Path) -> list[str]:
    """End the head's processes (its group, their children, anything of its directory); what is left."""
    ours = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if os.getpgid(process.pid) == pgid or str(work) in " ".join(process.info["cmdline"] or []):
                ours += [process, *process.children(recursive=True)]
        except (psutil.Error, ProcessLookupError):
            continue
    for process in ours:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(ours, timeout=15)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(alive, timeout=15)
    return [" ".join(p.cmdline()[:3]) for p in alive]


@pytest.fixture(scope="module")
def ray_service(ray_head: str, tiny_base: Path, tmp_path_factory: pytest.TempPathFactory):
    """A service whose jobs train on the Ray head (stopped before the head)."""
    work = tmp_path_factory.mktemp("ray-service")
    running = Service(
        work / "home",
        tiny_base,
        work / "service.log",
        extra_args=("--executor", "ray", "--ray-address", ray_head),
    )
    running.start()
    yield running
    if running.process is not None:
        assert running.stop() == []


def test_fine_tune_on_ray_then_chat_with_the_model(ray_service, ray_head, train_file):
    from ray.job_submission import JobSubmissionClient

    client = ray_service.client()
    upload = client.files.create(file=train_file.open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny-base", training_file=upload.id, suffix="ray", hyperparameters={"n_epochs": 2}
    )
    job = wait_for(client, job.id, ("succeeded", "failed", "cancelled"), timeout=600)
    assert job.status == "succeeded", job.error

    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert events[0] == "The job has successfully completed"
    assert any(m.startswith("Step 16: training loss=") for m in events)  # metrics read from the shared dir
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data[0].step_number == 16

    ray_jobs = {j.submission_id: j for j in JobSubmissionClient(ray_head).list_jobs()}
    ran = ray_jobs[f"tuneship-{job.id}-1"]  # the first attempt
    assert ran.status == "SUCCEEDED" and ran.driver_exit_code == 0
    assert ran.metadata["tuneship_job"] == job.id and " train --config " in ran.entrypoint
    output = (ray_service.home / "jobs" / job.id / "output.log").read_text()
    assert f"Running entrypoint for job tuneship-{job.id}-1" in output  # Ray's logs, copied

    ray_service.wait_ready()
    answers_differ(client, job.fine_tuned_model)


def test_an_orphaned_ray_job_is_stopped_and_its_attempt_runs_again(ray_head, tmp_path):
    """A service that died while its job trained on Ray: the next one stops that Ray job; a run of
    the same attempt number (a paused job resumed) replaces it, and its logs reach the job's log."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    from tuneship.entrypoints.service.executor import RayExecutor, submission_id
    from tuneship.entrypoints.service.process import error_line

    orphan = SimpleNamespace(id="ftjob-orphan", attempts=2, pid=None)
    ray = JobSubmissionClient(ray_head)
    ray.submit_job(
        entrypoint="sleep 300",
        submission_id=submission_id(orphan),
        entrypoint_num_cpus=0,
        metadata={"tuneship_job": orphan.id},
    )
    deadline = time.monotonic() + 60
    while ray.get_job_status(submission_id(orphan)) != JobStatus.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    executor = RayExecutor(ray_head, num_cpus=0)
    executor.stop_orphan(orphan)
    assert ray.get_job_status("tuneship-ftjob-orphan-2") == JobStatus.STOPPED
    executor.stop_orphan(SimpleNamespace(id="ftjob-never-ran", attempts=1, pid=None))  # nothing to stop

    run = executor.start(
        orphan, ["sh", "-c", "pwd; echo 'Error: no data'; exit 3"], tmp_path, tmp_path / "out.log"
    )
    assert run.id == "tuneship-ftjob-orphan-2-2"  # the stopped run keeps its name
    deadline = time.monotonic() + 60
    while (code := run.poll()) is None:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert code == 3 and str(tmp_path) in run.log_lines()  # it ran in the job's directory
    assert error_line(run.log_lines()) == "no data"  # the reason the worker fails the job with
    assert "Error: no data" in (tmp_path / "out.log").read_text()
