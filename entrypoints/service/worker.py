"""Workers: each takes one queued job at a time and runs it as a ``tuneship train`` subprocess.

The run gets a process group of its own (a cancel or a stop ends all of it) and its output goes
to ``JOB_DIR/output.log`` (or, with ``--executor ray``, it runs as a job on a Ray cluster:
executor.py). While it runs, its metrics become events and its checkpoints records; on success
the adapter enters the service's registry (the check and copy of ``tuneship adapters add``) and
is loaded into the managed vLLM through its hot-load guard, so the fine-tuned model answers at
once, with no restart. Its earlier checkpoints enter the registry too (each servable by its
``fine_tuned_model_checkpoint`` name), and with a validation file the job's A/B and fidelity
reports are made (evaluation.py) before it is marked ``succeeded``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tuneship.artifacts import ADAPTER_CONFIG, CHECKPOINTS_DIR, RUN_CONFIG, read_yaml
from tuneship.entrypoints.service.db import Job, now
from tuneship.entrypoints.service.evaluation import Evaluator
from tuneship.entrypoints.service.executor import Executor, LocalExecutor
from tuneship.entrypoints.service.files import FileStore
from tuneship.entrypoints.service.jobs import JobStore
from tuneship.entrypoints.service.plan import RUN_NAME, TRAIN_FILE, checkpoint_name, fine_tuned_name
from tuneship.entrypoints.service.process import CLI, error_line
from tuneship.entrypoints.service.runwatch import (
    RunWatcher,
    keep_adapter,
    last_checkpoint_step,
    train_metrics,
    valid_metrics,
)
from tuneship.errors import ServerError, TuneshipError

log = logging.getLogger(__name__)

OUTPUT_LOG = "output.log"  # a job's training output, in its directory
POLL = 0.5  # seconds between looks at a running job (cancel, metrics, checkpoints)
HEARTBEAT = 5  # seconds between heartbeats of a running job
# A running job whose heartbeat is older than this has lost its worker (6 missed beats): with
# several replicas on one database, any replica may then queue it again.
STALE_AFTER = 6 * HEARTBEAT


@dataclass
class Publisher:
    """Puts a finished run into the registry and loads it into the managed server."""

    registry: Path
    base: str  # the base model's directory, for the registry's check of the adapter's tensors
    endpoint: Callable[[], str | None]  # the managed vLLM's /v1 URL once it is ready (None before)
    api_key: str

    def publish(self, name: str, source: Path, load: bool = True) -> str:
        """Register the adapter of ``source`` (a run or checkpoint directory) as ``name``; says how.

        The registry's write-once entry (:meth:`Registry.put`: the checks of ``tuneship adapters
        add``, safetensors, lineage, template; it reads headers and copies files, nothing heavy;
        the same content again is a no-op, as when a retried job publishes again). ``load``: hot-load it into
        the managed server now (else vLLM loads it on its first request).
        """
        from tuneship.serve.registry import Registry

        Registry(self.registry).put(name, source, base=self.base)
        endpoint = self.endpoint()
        if endpoint is None or not load:
            return "registered; the model server loads it on the first request"
        from tuneship.serve.control import load

        try:
            load(endpoint, name, self.registry, self.api_key)
        except ServerError as e:
            raise TuneshipError(f"the model server did not load the adapter: {e}") from None
        return "registered and loaded"


class Worker(threading.Thread):
    """Runs queued jobs one after another until ``stop`` is set."""

    def __init__(
        self,
        index: int,
        jobs: JobStore,
        files: FileStore,
        publisher: Publisher,
        max_attempts: int,
        stop: threading.Event,
        kick: threading.Event,
        on_published: Callable[[], None] = lambda: None,
        stale_after: int | None = None,
        evaluator: Evaluator | None = None,
        executor: Executor | None = None,
    ) -> None:
        """``stale_after``: with replicas sharing the database, requeue jobs whose heartbeat is this old;
        ``evaluator``: the A/B and fidelity reports of jobs with a validation file (None: none);
        ``executor``: where training runs (default: a local process group)."""
        super().__init__(name=f"tuneship-worker-{index}", daemon=True)
        self.id = f"{socket.gethostname()}:{os.getpid()}:{index}"
        self.jobs = jobs
        self.files = files
        self.publisher = publisher
        self.max_attempts = max_attempts
        self.stop_event = stop
        self.kick = kick
        self.on_published = on_published
        self.stale_after = stale_after
        self.evaluator = evaluator
        self.executor = executor or LocalExecutor()

    def run(self) -> None:
        swept = time.monotonic()
        while not self.stop_event.is_set():
            job = None
            try:
                if self.stale_after and time.monotonic() - swept > HEARTBEAT:
                    # a replica that died
                    recover(self.jobs, self.max_attempts, self.stale_after, self.executor)
                    swept = time.monotonic()
                self.jobs.advance_validations()
                job = self.jobs.claim(self.id)
                if job is not None:
                    with _heartbeat(self.jobs, job.id):
                        self.run_job(job)
                    continue
            except Exception as e:  # noqa: BLE001 -- one broken job must not stop the worker
                log.exception("worker %s", self.id)
                if job is not None:
                    self._lost(job.id, e)
            self.kick.wait(POLL)
            self.kick.clear()

    def _lost(self, job_id: str, error: Exception) -> None:
        """A job this worker failed on unexpectedly: stop its run, queue it again or fail it with the
        reason (after ``max_attempts``), so it never stays ``running`` with nobody running it."""
        try:
            self.executor.stop_orphan(self.jobs.get(job_id))
            reason = f"The worker hit an internal error ({type(error).__name__}: {error})"
            self.jobs.requeue_or_fail(job_id, reason, self.max_attempts)
        except Exception:  # noqa: BLE001 -- the database itself may be what failed; recovery takes it
            log.exception("worker %s: job %s left for recovery", self.id, job_id)

    def run_job(self, job: Job) -> None:
        """Train, watching for a cancel, a pause and a stop; then publish, or fail with the run's reason."""
        job_dir = self.jobs.job_dir(job.id)
        run_dir = job_dir / RUN_NAME
        step = last_checkpoint_step(run_dir)
        args = [
            *CLI,
            "train",
            "--config",
            str(job_dir / TRAIN_FILE),
            "--force" if step is None else "--resume",
        ]
        if step is not None:
            self.jobs.add_event(job.id, f"Resuming from the checkpoint at step {step}", data={"step": step})
        group = self.executor.start(job, args, job_dir, job_dir / OUTPUT_LOG)
        self.jobs.update_running(job.id, pid=group.pid)
        watcher = RunWatcher(run_dir)
        if step is not None:
            watcher.new_rows()  # the earlier runs' entries are events already
        while (code := group.poll()) is None:
            self._report(job, watcher)
            if self.stop_event.wait(POLL):
                group.stop()
                self._report(job, watcher)  # what it logged last (a resumed run skips these steps)
                self.jobs.release(job.id, "The service stopped")
                return
            status = self.jobs.get(job.id).status
            if status != "running":  # cancelled or paused
                group.stop()
                self._report(job, watcher)
                paused = "; resume continues from the last checkpoint" if status == "paused" else ""
                self.jobs.add_event(job.id, f"Training stopped{paused}")
                return
        self._report(job, watcher)
        if code < 0:  # killed by a signal we did not send (the OOM killer, a person): a lost run
            group.stop()  # what the run had started (data loader workers) goes with it
            self.jobs.requeue_or_fail(job.id, f"The training process was killed (signal {-code})",
                                      self.max_attempts)  # fmt: skip
            return
        if code != 0:
            reason = error_line(group.log_lines()) or f"training exited with code {code}"
            error = {"code": "training_failed", "message": self._readable(job, reason), "param": None}
            self.jobs.finish(job.id, "failed", f"Job failed: {error['message']}", level="error", error=error)
            return
        self._succeed(job, run_dir, watcher)

    def _report(self, job: Job, watcher: RunWatcher) -> None:
        for row in watcher.new_rows():
            train = train_metrics(row)
            if train:
                message = f"Step {train['step']}: training loss={train['train_loss']:.4f}"
                self.jobs.add_event(job.id, message, type="metrics", data=train)
            valid = valid_metrics(row)
            if valid:
                message = f"Step {valid['step']}: validation loss={valid['valid_loss']:.4f}"
                self.jobs.add_event(job.id, message, type="metrics", data=valid)
        for step, path in watcher.new_checkpoints():
            name = checkpoint_name(self._fine_tuned(job), step)
            kept = keep_adapter(path, self.jobs.job_dir(job.id) / CHECKPOINTS_DIR / f"step-{step}") or path
            self.jobs.add_checkpoint(job.id, step, watcher.metrics_at(step), name, str(kept), final=False)

    def _succeed(self, job: Job, run_dir: Path, watcher: RunWatcher) -> None:
        summary = (read_yaml(run_dir / RUN_CONFIG) or {}).get("result", {})
        steps = int(summary.get("steps") or 0)
        results = self.files.add_result("step_metrics.csv", watcher.metrics_csv())
        fine_tuned = self._fine_tuned(job)
        try:
            how = self.publisher.publish(job.id, run_dir)
        except TuneshipError as e:
            error = {"code": "publish_failed", "message": str(e), "param": None}
            self.jobs.finish(job.id, "failed", f"Job failed: {e}", level="error", error=error)
            return
        final = checkpoint_name(fine_tuned, steps)
        self.jobs.add_checkpoint(job.id, steps, watcher.metrics_at(steps), final, str(run_dir), final=True)
        self.jobs.add_event(job.id, f"New fine-tuned model created: {fine_tuned} ({how})")
        self._publish_checkpoints(job)
        reports = [results.id, *self._evaluate(job, run_dir)]
        self.jobs.finish(
            job.id,
            "succeeded",
            "The job has successfully completed",
            fine_tuned_model=fine_tuned,
            trained_tokens=summary.get("num_tokens") or watcher.trained_tokens(),
            result_files=reports,
            registry_name=job.id,
        )
        self.on_published()

    def _publish_checkpoints(self, job: Job) -> None:
        """Register the job's earlier checkpoints (kept copies), each servable under its own name."""
        for checkpoint in self.jobs.checkpoints(job.id, None, 100)[0]:
            path = Path(checkpoint.path or "")
            if checkpoint.final or not (path / ADAPTER_CONFIG).is_file():
                continue
            name = f"{job.id}-step-{checkpoint.step_number}"
            try:
                self.publisher.publish(name, path, load=False)
            except TuneshipError as e:
                message = f"Checkpoint at step {checkpoint.step_number} is not servable: {e}"
                self.jobs.add_event(job.id, message, level="warn")
                continue
            self.jobs.serve_checkpoint(job.id, checkpoint.step_number, name)

    def _evaluate(self, job: Job, run_dir: Path) -> list[str]:
        """With a validation file: the A/B and fidelity reports as events; their result files' ids."""
        if not job.validation_file or self.evaluator is None:
            return []
        if job.method.get("type") == "dpo":
            message = "No A/B report: a DPO validation file holds preference pairs, not reference answers"
            self.jobs.add_event(job.id, message, level="warn")
            return []
        message = "Evaluating the new model on the validation file (tuneship ab, tuneship verify)"
        self.jobs.add_event(job.id, message)
        validation = self.files.path(self.files.get(job.validation_file))
        ids = []
        for report in self.evaluator.reports(self.jobs.job_dir(job.id), run_dir, job.id, validation):
            self.jobs.add_event(job.id, report.message, level=report.level, data=report.data)
            ids += [self.files.add_result(name, text).id for name, text in report.files.items()]
        return ids

    def _fine_tuned(self, job: Job) -> str:
        return fine_tuned_name(self.jobs.base_name, job.suffix, job.id)

    def _readable(self, job: Job, reason: str) -> str:
        """Training's message with the stored file paths replaced by the client's filenames."""
        for file_id in (job.training_file, job.validation_file):
            if file_id:
                record = self.files.get(file_id)
                reason = reason.replace(str(self.files.path(record)), record.filename)
        return reason


@contextmanager
def _heartbeat(jobs: JobStore, job_id: str) -> Iterator[None]:
    """Beat for a running job every HEARTBEAT seconds (training and publishing alike) until the block ends."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(HEARTBEAT):
            jobs.update_running(job_id, heartbeat_at=now())

    thread = threading.Thread(target=beat, name=f"tuneship-heartbeat-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def recover(
    jobs: JobStore, max_attempts: int, stale_after: int | None = None, executor: Executor | None = None
) -> None:
    """Jobs left running by a worker that is gone: stop what is left of their runs, queue them again.

    ``stale_after=None``: every running job is an orphan (one service per SQLite file, at its
    start). With several replicas on PostgreSQL, only jobs whose heartbeat is ``stale_after``
    seconds old are: a live replica's job is never taken.
    """
    stale_before = now() - stale_after if stale_after else None
    for job in jobs.running_on(stale_before):
        (executor or LocalExecutor()).stop_orphan(job)
        jobs.requeue_or_fail(job.id, "The worker running the job stopped", max_attempts)
