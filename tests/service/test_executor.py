"""Where jobs train: the settings of the Ray executor and how a Ray job's state reads as an exit code."""

from __future__ import annotations

import signal

import pytest


def test_a_ray_jobs_status_reads_as_the_exit_code_the_worker_expects():
    from tuneship.entrypoints.service.executor import exit_code

    assert exit_code("PENDING", None) is None and exit_code("RUNNING", None) is None
    assert exit_code("SUCCEEDED", 0) == 0
    assert exit_code("FAILED", 1) == 1  # training's own error: the job fails with its message
    assert exit_code("FAILED", -9) == -9  # killed (the OOM killer): queued again
    assert exit_code("FAILED", None) == -signal.SIGKILL  # lost with its node: queued again
    assert exit_code("STOPPED", None) == -signal.SIGTERM


def test_the_ray_executor_needs_the_job_servers_address():
    from tuneship.entrypoints.service.config import ServiceConfig
    from tuneship.entrypoints.service.executor import LocalExecutor, RayExecutor, executor_from
    from tuneship.errors import TuneshipError

    with pytest.raises((TuneshipError, ValueError), match="ray_address"):
        ServiceConfig(executor="ray")
    ray = executor_from(ServiceConfig(executor="ray", ray_address="http://head:8265", ray_gpus=1))
    assert isinstance(ray, RayExecutor) and (ray.address, ray.num_cpus, ray.num_gpus) == (
        "http://head:8265",
        1,
        1,
    )
    assert isinstance(executor_from(ServiceConfig()), LocalExecutor)


def test_a_ray_run_is_named_by_its_job_and_attempt():
    from types import SimpleNamespace

    from tuneship.entrypoints.service.executor import submission_id

    job = SimpleNamespace(id="ftjob-1", attempts=2)
    assert submission_id(job) == "tuneship-ftjob-1-2"
    assert submission_id(job, {"tuneship-ftjob-1-2", "tuneship-ftjob-1-2-2"}) == "tuneship-ftjob-1-2-3"
