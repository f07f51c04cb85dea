"""The service as its users meet it: the official openai SDK against one `tuneship service` process.

Real parts only: the service subprocess, its vLLM, `tuneship train` subprocesses, SQLite records.
The tests run in file order and share the service (and its records) as a team would.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from helpers import answers_differ


def test_keys_and_roles(service):
    no_key = httpx.get(f"{service.url}/fine_tuning/jobs", timeout=30)
    assert no_key.status_code == 401
    assert set(no_key.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.AuthenticationError):
        service.client("sk-ts-not-a-key").fine_tuning.jobs.list()
    user = service.client(service.user_key)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        user.fine_tuning.jobs.create(model="tiny-base", training_file="file-x")
    assert denied.value.body["code"] == "insufficient_permissions"
    with pytest.raises(openai.PermissionDeniedError):
        user.files.create(file=("t.jsonl", b"{}\n"), purpose="fine-tune")
    assert service.client().fine_tuning.jobs.list().data == []  # an admin key may


def test_upload_limit_and_cut_off_upload(service, tmp_path):
    client = service.client()
    big = tmp_path / "big.jsonl"
    big.write_bytes(b'{"prompt": "p", "completion": "c"}\n' * 70_000)  # 2.4 MB against a 1 MiB limit
    with pytest.raises(openai.APIStatusError) as refused:
        client.files.create(file=big.open("rb"), purpose="fine-tune")
    assert refused.value.status_code == 413 and refused.value.body["code"] == "file_too_large"
    # A client that sends half of its upload and goes away leaves no record and no bytes.
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jsonl"\r\n\r\n' + b"x" * 50_000
    with socket.create_connection(("127.0.0.1", service.port)) as s:
        s.sendall(
            b"POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            + f"Authorization: Bearer {service.admin_key}\r\nContent-Length: 400000\r\n\r\n".encode()
            + body
        )
        time.sleep(1)
    time.sleep(2)
    assert client.files.list().data == []
    assert [p.name for p in (service.home / "files").iterdir()] == []


def test_a_bad_file_fails_the_job_with_its_line_numbers(service, tmp_path):
    client = service.client()
    upload = client.files.create(file=bad_rows(tmp_path / "bad.jsonl").open("rb"), purpose="fine-tune")
    assert upload.filename == "bad.jsonl" and upload.purpose == "fine-tune"
    job = client.fine_tuning.jobs.create(model="tiny-base", training_file=upload.id)
    assert job.status == "validating_files"
    job = wait_for(client, job.id, ("failed", "succeeded"))
    assert job.status == "failed" and job.error.code == "invalid_training_file"
    assert job.error.param == "training_file"
    assert "bad.jsonl:2:" in job.error.message and "bad.jsonl:4:" in job.error.message
    assert str(service.home) not in job.error.message  # the client's filename, never the stored path
    checked = client.files.retrieve(upload.id)
    assert checked.status == "error" and "bad.jsonl:2:" in checked.status_details
    assert client.files.content(upload.id).content == (tmp_path / "bad.jsonl").read_bytes()


def test_fine_tune_then_chat_with_the_model_two_jobs_in_order(service, train_file, validation_file):
    client = service.client()
    upload = client.files.create(file=train_file.open("rb"), purpose="fine-tune")
    held_out = client.files.create(file=validation_file.open("rb"), purpose="fine-tune")
    first = client.fine_tuning.jobs.create(
        model="tiny-base",
        training_file=upload.id,
        validation_file=held_out.id,
        suffix="tickets",
        seed=7,
        metadata={"team": "support"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
    )
    second = client.fine_tuning.jobs.create(
        model="tiny-base", training_file=upload.id, hyperparameters={"n_epochs": 1, "batch_size": 16}
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # one worker: never both running
        states = {j.id: j.status for j in client.fine_tuning.jobs.list().data}
        assert [states[first.id], states[second.id]].count("running") <= 1
        if {states[first.id], states[second.id]} <= {"succeeded", "failed"}:
            break
        time.sleep(1)
    first, second = (client.fine_tuning.jobs.retrieve(j.id) for j in (first, second))
    assert (first.status, second.status) == ("succeeded", "succeeded"), (first.error, second.error)
    # The second is queued first (the first waits for its validation file's check): one after the other.
    starts = {
        j.id: [
            e.created_at
            for e in client.fine_tuning.jobs.list_events(j.id, limit=100)
            if "started" in e.message
        ]
        for j in (first, second)
    }
    earlier, later = sorted((first, second), key=lambda j: starts[j.id][0])
    assert starts[later.id][0] >= earlier.finished_at

    # The job as OpenAI reports it: names, resolved hyperparameters, tokens, result file.
    assert first.fine_tuned_model == f"ft:tiny-base:tickets:{first.id}"
    assert first.method.supervised.hyperparameters.n_epochs == 2
    assert first.hyperparameters.batch_size == 8 and first.hyperparameters.learning_rate_multiplier == 1.0
    assert (
        second.hyperparameters.batch_size == 16 and first.seed == 7 and first.metadata == {"team": "support"}
    )
    assert first.trained_tokens > 0
    checkpoints = client.fine_tuning.jobs.checkpoints.list(first.id).data
    steps = checkpoints[0].step_number  # the newest is the final model
    assert steps >= 8
    results = client.files.content(first.result_files[0]).text.splitlines()
    assert results[0].startswith("step,train_loss,") and len(results) == 1 + steps
    assert "valid_loss" in results[0] and results[-1].split(",")[3]  # held-out loss at the last step
    _reports_attached(client, first)

    events = client.fine_tuning.jobs.list_events(first.id, limit=5).data
    everything = list(client.fine_tuning.jobs.list_events(first.id, limit=200))  # every page
    assert events == everything[:5]  # newest first, pages follow
    page = client.fine_tuning.jobs.list_events(first.id, limit=3)
    assert (
        page.has_more
        and client.fine_tuning.jobs.list_events(first.id, after=page.data[-1].id, limit=2).data
        == everything[3:5]
    )
    metrics = [e for e in everything if e.type == "metrics"]
    assert sorted(e.data["step"] for e in metrics if "train_loss" in e.data) == list(range(1, steps + 1))
    held_out = [e.data["step"] for e in metrics if "valid_loss" in e.data]
    assert held_out and steps in held_out  # the validation file is evaluated, last at the end
    assert everything[0].message == "The job has successfully completed"

    assert all(
        c.fine_tuned_model_checkpoint.startswith(first.fine_tuned_model + ":ckpt-step-") for c in checkpoints
    )
    assert checkpoints[0].metrics.train_loss is not None

    service.wait_ready()
    listed = {m.id: m for m in client.models.list()}
    assert listed[first.fine_tuned_model].parent == "tiny-base"
    assert (
        service.client(service.user_key).models.retrieve(second.fine_tuned_model).id
        == second.fine_tuned_model
    )
    answers_differ(client, first.fine_tuned_model)
    root, auth = service.url.removesuffix("/v1"), {"Authorization": f"Bearer {service.user_key}"}
    tokens = httpx.post(
        f"{root}/tokenize", json={"model": "tiny-base", "prompt": "Hi"}, headers=auth, timeout=60
    )
    text = httpx.post(
        f"{root}/detokenize",
        json={"model": "tiny-base", "tokens": tokens.json()["tokens"]},
        headers=auth,
        timeout=60,
    )
    assert text.json()["prompt"] == "Hi"
    final = client.chat.completions.create(
        model=checkpoints[0].fine_tuned_model_checkpoint,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
    )
    assert final.model == checkpoints[0].fine_tuned_model_checkpoint
    _earlier_checkpoint_answers(client, first, checkpoints)


def _reports_attached(client, job) -> None:
    """A job with a validation file: its A/B and fidelity reports are result files, their verdicts events."""
    names = {client.files.retrieve(f).filename: f for f in job.result_files}
    assert {"ab_report.md", "ab_results.json", "fidelity_report.md", "fidelity.json"} <= set(names)
    ab = json.loads(client.files.content(names["ab_results.json"]).text)
    assert ab["base"] == "tiny-base" and ab["items"] == 12
    comparison = ab["comparisons"][job.id][0]  # served under its registry name; reported under it
    fidelity = json.loads(client.files.content(names["fidelity.json"]).text)
    events = {e.message: e for e in client.fine_tuning.jobs.list_events(job.id, limit=100)}
    verdicts = [m for m in events if m.startswith("A/B on the validation file (12 items")]
    assert verdicts and verdicts[0].endswith(f": {comparison['verdict']}")
    assert f"Fidelity of the served model (tuneship verify): {fidelity['verdict']}" in "\n".join(events)
    assert fidelity["checks"]["applied"]["status"] == "passed"  # the adapter changes the answers


def _earlier_checkpoint_answers(client, job, checkpoints) -> None:
    """A checkpoint before the last is servable by its name, and it is not the final model."""
    earlier = [c for c in checkpoints if c.step_number < checkpoints[0].step_number]
    assert earlier, [c.step_number for c in checkpoints]
    listed = {m.id for m in client.models.list()}
    assert {c.fine_tuned_model_checkpoint for c in checkpoints} <= listed
    prompt = [{"role": "user", "content": "My invoice shows a charge twice this month."}]
    answers = [
        client.chat.completions.create(model=m, messages=prompt, max_tokens=16, temperature=0)
        for m in (earlier[-1].fine_tuned_model_checkpoint, job.fine_tuned_model)
    ]
    assert answers[0].model == earlier[-1].fine_tuned_model_checkpoint
    assert answers[0].choices[0].message.content and answers[1].choices[0].message.content
    # vLLM loaded the checkpoint's own weights (the copy kept at its step), not the final model's.
    served = {m.id: m for m in client.models.list()}[earlier[-1].fine_tuned_model_checkpoint]
    step_dir = Path(served.root)
    assert step_dir.name == f"{job.id}-step-{earlier[-1].step_number}", served
    final_weights = step_dir.parent / job.id / "adapter_model.safetensors"
    assert (step_dir / "adapter_model.safetensors").read_bytes() != final_weights.read_bytes()


def test_cancel_while_running_stops_the_training(service):
    client = service.client()
    upload = training_upload(client)
    job = client.fine_tuning.jobs.create(
        model="tiny-base", training_file=upload.id, hyperparameters={"n_epochs": 25}
    )
    deadline = time.monotonic() + 300
    while not any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id, limit=20)):
        assert time.monotonic() < deadline and client.fine_tuning.jobs.retrieve(job.id).status in (
            "validating_files", "queued", "running"
        )  # fmt: skip
        time.sleep(1)
    assert training_processes(job.id)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    deadline = time.monotonic() + 60
    while training_processes(job.id) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert training_processes(job.id) == []
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    wait_for_event(client, job.id, "Training stopped")  # written once its processes are gone
    assert "Job cancelled" in [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(client.fine_tuning.jobs.list().data[-1].id)  # failed already


def test_a_killed_run_and_a_paused_job_continue_from_their_checkpoints(service):
    client = service.client()
    upload = training_upload(client)
    job = client.fine_tuning.jobs.create(
        model="tiny-base", training_file=upload.id, hyperparameters={"n_epochs": 10}
    )  # 80 steps, a checkpoint every 27
    killed_at = wait_for_checkpoint(client, job.id, above=0)
    for process in training_processes(job.id):  # SIGKILL, as the OOM killer would
        process.send_signal(signal.SIGKILL)
    resumed = wait_for_event(client, job.id, "Resuming from the checkpoint at step")
    assert resumed.data["step"] >= killed_at > 0
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=200)]
    assert "The training process was killed (signal 9); the job is queued again" in messages

    paused = client.fine_tuning.jobs.pause(job.id)  # the resumed run, as it starts
    assert paused.status == "paused"
    deadline = time.monotonic() + 60
    while training_processes(job.id) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert training_processes(job.id) == []
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"
    with pytest.raises(openai.BadRequestError, match="only a queued or running job can be paused"):
        client.fine_tuning.jobs.pause(job.id)
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    job = wait_for(client, job.id, ("succeeded", "failed", "cancelled"))
    assert job.status == "succeeded", job.error
    steps = [e.data["step"] for e in client.fine_tuning.jobs.list_events(job.id, limit=200)
             if e.message.startswith("Resuming from the checkpoint at step")]  # fmt: skip
    assert len(steps) == 2 and steps[0] >= steps[1] > 0  # newest first
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data[0].step_number == 80
    metrics = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=500) if e.type == "metrics"]
    assert sorted(e.data["step"] for e in metrics) == list(range(1, 81))  # each step once, three runs
    with pytest.raises(openai.BadRequestError, match="only a paused job can be resumed"):
        client.fine_tuning.jobs.resume(job.id)


def test_a_restart_keeps_files_jobs_and_events_and_serves_the_models(service):
    client = service.client()
    before = (client.files.list().data, client.fine_tuning.jobs.list().data)
    tuned = next(j for j in before[1] if j.fine_tuned_model)
    events = client.fine_tuning.jobs.list_events(tuned.id, limit=100).data
    assert service.stop() == []  # SIGTERM: vLLM and every training process gone with it
    service.start()
    client = service.client()
    assert (client.files.list().data, client.fine_tuning.jobs.list().data) == before
    assert client.fine_tuning.jobs.list_events(tuned.id, limit=100).data == events
    service.wait_ready()
    answer = client.chat.completions.create(
        model=tuned.fine_tuned_model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert answer.model == tuned.fine_tuned_model


def training_upload(client):
    """The main flow's training file (64 rows), uploaded and checked already."""
    return next(f for f in client.files.list(purpose="fine-tune") if f.filename == "train.jsonl")


def wait_for(client, job_id: str, statuses: tuple[str, ...], timeout: float = 400):
    """Poll a job until its status is one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(1)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout}s")


def wait_for_checkpoint(client, job_id: str, above: int, timeout: float = 400) -> int:
    """Poll a running job until it has a checkpoint after step ``above``; that step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job_id).data]
        if steps and max(steps) > above:
            return max(steps)
        assert client.fine_tuning.jobs.retrieve(job_id).status in ("validating_files", "queued", "running")
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} has no checkpoint after step {above} after {timeout}s")


def wait_for_event(client, job_id: str, start: str, timeout: float = 120):
    """Poll a job's events until one begins with ``start``; that event."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [
            e for e in client.fine_tuning.jobs.list_events(job_id, limit=100) if e.message.startswith(start)
        ]
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} has no event {start!r} after {timeout}s")


def training_processes(job_id: str) -> list[psutil.Process]:
    """Processes running this job's training (their command line names its settings file)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if job_id in " ".join(process.info["cmdline"] or []) and process.status() != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


def bad_rows(path: Path) -> Path:
    """A training file with a good row, a row whose prompt is a number, and a line that is not JSON."""
    good = {"prompt": "Hello", "completion": "World"}
    path.write_text(
        json.dumps(good) + "\n" + json.dumps({"prompt": 1, "completion": "x"}) + "\n"
        + json.dumps(good | {"prompt": "Hi"}) + "\n" + "{not json\n"
    )  # fmt: skip
    return path
