"""The service's parts that need no server: records and migrations, keys, plans, names, uploads."""

from __future__ import annotations

import asyncio

import pytest


def test_migrations_create_exactly_the_models(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from tuneship.entrypoints.service.db import Base, connect

    engine = connect(f"sqlite:///{tmp_path / 'records.db'}")
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    connect(f"sqlite:///{tmp_path / 'records.db'}").dispose()  # a second start migrates nothing
    engine.dispose()


def test_keys_are_stored_hashed_with_their_role(tmp_path):
    from sqlalchemy import select

    from tuneship.entrypoints.service.db import ApiKey, connect, sessions
    from tuneship.entrypoints.service.keys import KeyRing, create_key
    from tuneship.errors import TuneshipError

    engine = connect(f"sqlite:///{tmp_path / 'records.db'}")
    factory = sessions(engine)
    key = create_key(factory, "ops", "admin")
    with factory() as session:
        stored = session.scalars(select(ApiKey)).one()
    assert key not in (stored.key_sha256, stored.prefix) and stored.role == "admin"
    ring = KeyRing(factory)
    assert ring.role(key) == "admin" and ring.role(key + "x") is None
    with pytest.raises(TuneshipError, match="role 'root'"):
        create_key(factory, "ops", "root")
    engine.dispose()


def test_auto_hyperparameters_follow_openais_rule():
    from tuneship.entrypoints.service.plan import auto_epochs, resolve, service_defaults

    assert [auto_epochs(n) for n in (1, 10, 30, 64, 20_000)] == [25, 10, 4, 3, 1]
    defaults = service_defaults({"batch_size": "4"}, "default")
    asked = {"n_epochs": "auto", "batch_size": 2, "learning_rate_multiplier": "auto", "beta": "auto"}
    resolved = resolve({"type": "supervised", "hyperparameters": asked}, 64, defaults)
    assert resolved["hyperparameters"] == {
        "n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 1.0, "beta": 0.1
    }  # fmt: skip


def test_job_requests_are_checked_like_openais():
    from pydantic import ValidationError

    from tuneship.entrypoints.service.schemas import APIError, JobCreate

    with pytest.raises(ValidationError, match="suffix"):
        JobCreate(model="m", training_file="f", suffix="a:b")  # it becomes part of a model name
    with pytest.raises(ValidationError, match="reinforcement"):
        JobCreate.model_validate({"model": "m", "training_file": "f", "method": {"type": "reinforcement"}})
    with pytest.raises(APIError, match="beta"):
        JobCreate.model_validate(
            {"model": "m", "training_file": "f", "hyperparameters": {"beta": 0.2}}
        ).requested()
    legacy = JobCreate.model_validate(
        {"model": "m", "training_file": "f", "hyperparameters": {"n_epochs": 3}}
    )
    assert legacy.requested()["hyperparameters"]["n_epochs"] == 3


def test_a_clients_filename_is_metadata_never_a_path():
    from tuneship.entrypoints.service.upload import clean_filename, stored_suffix

    assert clean_filename("../../etc/passwd") == "passwd"
    assert clean_filename("C:\\data\\train.jsonl") == "train.jsonl"
    assert clean_filename("") == "upload.jsonl"
    assert stored_suffix("x.CSV") == ".csv" and stored_suffix("x.sh") == ".jsonl"


def test_the_served_name_is_renamed_even_when_split_across_chunks():
    from tuneship.entrypoints.service.proxy import _renamed

    async def chunks():
        for piece in (
            b'data: {"id":1,"model":"ftjob',
            b'-1","x":2}\n\ndata: {"model":"ftjob-1"}\n\n',
            b"[DONE]",
        ):
            yield piece

    async def collect():
        return b"".join([piece async for piece in _renamed(chunks(), "ftjob-1", "ft:b::ftjob-1")])

    out = asyncio.run(collect())
    assert out.count(b'"model":"ft:b::ftjob-1"') == 2 and out.endswith(b"[DONE]")


def test_a_bad_service_setting_is_one_clear_line(tmp_path):
    from click.testing import CliRunner

    from tuneship.entrypoints.cli import cli

    result = CliRunner().invoke(cli, ["service", "--home", str(tmp_path), "--train-setting", "data=x.jsonl"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert (
        result.output.strip()
        == "Error: invalid settings: train_settings: data: set by each job, not by the service"
    )


def test_a_job_whose_runs_keep_getting_lost_fails_after_max_attempts(tmp_path):
    from tuneship.entrypoints.service.db import Job, connect, sessions
    from tuneship.entrypoints.service.jobs import JobStore

    engine = connect(f"sqlite:///{tmp_path / 'records.db'}")
    store = JobStore(sessions(engine), None, None, "tiny-base", None)
    with store.sessions.begin() as session:
        session.add(Job(id="ftjob-1", model="tiny-base", training_file="file-x", seed=1,
                        method={"type": "supervised"}, status="queued", result_files=[]))  # fmt: skip
    for _ in range(3):
        assert store.claim("w").id == "ftjob-1"
        store.requeue_or_fail("ftjob-1", "The training process was killed (signal 9)", max_attempts=3)
    job = store.get("ftjob-1")
    assert job.status == "failed" and job.error["code"] == "training_lost"
    assert job.error["message"] == "The training process was killed (signal 9) (after 3 attempts)"
    assert store.claim("w") is None
    engine.dispose()


def test_a_worker_that_fails_unexpectedly_requeues_then_fails_the_job_and_keeps_working(tmp_path):
    import threading
    import time

    from tuneship.entrypoints.service.db import Event, Job, connect, sessions
    from tuneship.entrypoints.service.jobs import JobStore
    from tuneship.entrypoints.service.worker import Worker

    engine = connect(f"sqlite:///{tmp_path / 'records.db'}")
    store = JobStore(sessions(engine), None, None, "tiny-base", None)
    with store.sessions.begin() as session:
        for n in (1, 2):
            session.add(Job(id=f"ftjob-{n}", model="tiny-base", training_file="file-x", seed=1,
                            method={"type": "supervised"}, status="queued", result_files=[]))  # fmt: skip
    stop, ran = threading.Event(), []

    class Broken(Worker):
        def run_job(self, job):  # the unit under test is the loop around it
            ran.append(job.id)
            if job.id == "ftjob-1":
                raise KeyError("registry")
            store.finish(job.id, "succeeded", "done")

    worker = Broken(0, store, None, None, max_attempts=2, stop=stop, kick=threading.Event())
    worker.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and store.get("ftjob-2").status != "succeeded":
        time.sleep(0.05)
    stop.set()
    worker.join(10)
    first = store.get("ftjob-1")
    assert first.status == "failed" and first.error["code"] == "training_lost"
    assert (
        first.error["message"] == "The worker hit an internal error (KeyError: 'registry') (after 2 attempts)"
    )
    assert ran == ["ftjob-1", "ftjob-1", "ftjob-2"]  # queued again once, then failed; the next job ran
    with store.sessions() as session:
        warned = [e.message for e in session.query(Event).filter_by(job_id="ftjob-1", level="warn")]
    assert warned == ["The worker hit an internal error (KeyError: 'registry'); the job is queued again"]
    engine.dispose()
