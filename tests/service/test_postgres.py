"""The service on a real PostgreSQL server, as a team deploys it: several replicas, one database.

The records tests use a database of their own on the module's server; the replicas share another
(and one home directory: the files, job directories and registry are shared storage).
"""

from __future__ import annotations

import threading

import pytest
from service.conftest import Service
from service.test_service import wait_for
from sqlalchemy import create_engine, select, text, update


def fresh_database(url: str, name: str) -> str:
    """Create database ``name`` on the server of ``url``; its URL."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="module")
def records(postgres):
    """An engine on a migrated database of its own, and a job store over it (claims only)."""
    from tuneship.entrypoints.service.db import connect, sessions
    from tuneship.entrypoints.service.jobs import JobStore

    engine = connect(fresh_database(postgres, "records"))
    yield engine, JobStore(sessions(engine), None, None, "tiny-base", None)
    engine.dispose()


def queue_jobs(engine, count: int, status: str = "queued") -> list[str]:
    from sqlalchemy.orm import Session

    from tuneship.entrypoints.service.db import Job
    from tuneship.entrypoints.service.files import new_id

    ids = [new_id("ftjob") for _ in range(count)]
    with Session(engine) as session, session.begin():
        for job_id in ids:
            session.add(
                Job(id=job_id, model="tiny-base", training_file="file-x", seed=1,
                    method={"type": "supervised", "hyperparameters": {}}, status=status, result_files=[])
            )  # fmt: skip
    return ids


def test_migrations_on_postgresql_create_exactly_the_models(records):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from tuneship.entrypoints.service.db import Base, migrate

    engine, _ = records
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    migrate(engine)  # a second replica's start migrates nothing


def test_workers_racing_on_postgresql_take_each_job_once(records):
    engine, store = records
    queued = queue_jobs(engine, 24)
    taken: list[str] = []

    def work(index: int) -> None:
        while (job := store.claim(f"worker-{index}")) is not None:
            taken.append(job.id)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken) == sorted(queued)  # every job once, none twice


def test_recover_takes_only_jobs_whose_heartbeat_is_stale(records):
    from tuneship.entrypoints.service.db import Job, now
    from tuneship.entrypoints.service.worker import STALE_AFTER, recover

    engine, store = records
    live, lost = queue_jobs(engine, 2, status="running")
    with engine.begin() as connection:
        connection.execute(update(Job).where(Job.id == live).values(heartbeat_at=now(), attempts=1))
        connection.execute(
            update(Job).where(Job.id == lost).values(heartbeat_at=now() - STALE_AFTER - 5, attempts=1)
        )
    recover(store, max_attempts=3, stale_after=STALE_AFTER)
    with engine.connect() as connection:
        states = dict(connection.execute(select(Job.id, Job.status).where(Job.id.in_([live, lost]))).all())
    assert states == {live: "running", lost: "queued"}


@pytest.fixture(scope="module")
def replicas(postgres, tiny_base, tmp_path_factory):
    """Two services on one PostgreSQL database and one shared home, each with a worker."""
    work = tmp_path_factory.mktemp("replicas")
    url = fresh_database(postgres, "tuneship")
    first = Service(work / "home", tiny_base, work / "first.log", database_url=url, eager=True)
    keys = (first.admin_key, first.user_key)
    second = Service(work / "home", tiny_base, work / "second.log", database_url=url, keys=keys, eager=True)
    first.start()
    second.start()
    yield first, second
    for replica in (first, second):
        if replica.process is not None:
            assert replica.stop() == []


def test_two_replicas_run_one_job_once_and_both_serve_it(replicas, train_file):
    first, second = replicas
    client = first.client()
    upload = client.files.create(file=train_file.open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny-base", training_file=upload.id, suffix="pg", hyperparameters={"n_epochs": 1}
    )
    job = wait_for(second.client(), job.id, ("succeeded", "failed", "cancelled"))  # seen by the other
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:tiny-base:pg:{job.id}"
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=200)]
    assert messages.count("Fine-tuning job started") == 1
    assert not [m for m in messages if "queued again" in m]
    engine = create_engine(first.database_url)
    from tuneship.entrypoints.service.db import Job

    with engine.connect() as connection:
        attempts, worker = connection.execute(select(Job.attempts, Job.worker).where(Job.id == job.id)).one()
    engine.dispose()
    assert attempts == 1 and worker
    for replica in (first, second):  # the shared registry: either front door answers for it
        replica.wait_ready()
        answer = replica.client(replica.user_key).chat.completions.create(
            model=job.fine_tuned_model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert answer.model == job.fine_tuned_model
    assert second.client().fine_tuning.jobs.retrieve(job.id).status == "succeeded"
