"""Trainer lifecycle: which jobs to train, one run at a time, in a worker thread; events in and out.
No gRPC and no Kafka here: the servicer calls this class and the event bus feeds `handle`.

Events in (consumer group "trainer"): `job_submitted` stores the job's TrainingConfig
(state/trainer/<job>/config.pb; the Kafka key is the job id, so it arrives before the job's
records_built); `records_built` queues the job and returns at once (training runs in the worker
thread, so the consumer is never blocked past max.poll.interval); `cancel_requested` stops the run at
the next step boundary with a final checkpoint.

Events out: `training_progress` (every epoch, and every `progress_seconds` within one),
`training_completed`, `job_cancelled` (stage TRAINING, with the final checkpoint), `stage_failed`.

State: state/trainer/<job>/training.pb (a `Training`: status, records, effective config, last
checkpoint, model) is written before the handler returns, so the offset is committed only once the
job is durably queued. On start-up `resume()` re-queues every job still QUEUED or RUNNING; a RUNNING
one continues from its last checkpoint. Idempotency: a job that is SUCCEEDED, or whose
models/<job>/manifest.json exists (the export finished), is never trained again; a redelivered
records_built for a queued or running job changes nothing.

TrainerDomain composes: the jobs' state (training_store.TrainingStore), the worker thread that trains
the queue (worker.TrainingWorker), one job's run (job_run.JobRunner) and the events out with the mapping
of a run's progress to them (progress_events).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from classforge.v1 import common_pb2, events_pb2, trainer_service_pb2
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.events import EventBus, payload_kind
from services.common.stage_work import Stage
from services.common.storage import ObjectStore
from services.trainer.config import with_defaults
from services.trainer.data import open_records
from services.trainer.job_run import DataOpener, JobRunner
from services.trainer.progress_events import TrainingEvents
from services.trainer.recipe import Hardware
from services.trainer.training_store import Training, TrainingStore, copy_of
from services.trainer.worker import TrainingWorker

log = logging.getLogger("classforge.trainer")

Status = trainer_service_pb2.TrainingStatus
TERMINAL = {Status.TRAINING_STATUS_SUCCEEDED, Status.TRAINING_STATUS_FAILED, Status.TRAINING_STATUS_STOPPED}
ACTIVE = {Status.TRAINING_STATUS_QUEUED, Status.TRAINING_STATUS_RUNNING}
KINDS = ["job_submitted", "records_built", "cancel_requested"]


class TrainerDomain:
    def __init__(self, bus: EventBus, store: ObjectStore, *, work_root: str | Path, progress_seconds: float = 10.0,
                 producer: str = "trainer", open_data: DataOpener | None = None, outage_window_s: float = 180.0,
                 retry_seconds: float = 5.0, heartbeat_seconds: float = 30.0, hardware: Hardware | None = None,
                 max_workers: int = 4, worker_restarts: int = 1, worker_launch: str = "local",
                 external_workers_timeout: float = 86400.0):
        self.stage = Stage(bus, store, common_pb2.JOB_STAGE_TRAINING, producer, heartbeat_seconds=heartbeat_seconds)
        self._lock = threading.Condition()  # one lock for the jobs' state and the queue (TrainingStore)
        self.trainings = TrainingStore(store, self._lock)
        self.events = TrainingEvents(bus, producer)
        self.runner = JobRunner(
            self.trainings, self.events, self.stage, store, work_root=Path(work_root),
            progress_seconds=progress_seconds, outage_window_s=outage_window_s, retry_seconds=retry_seconds,
            open_data=open_data or (lambda uri, config, cache: open_records(store, uri, config, cache)),
            hardware=hardware, is_closing=lambda: self.worker.closing, max_workers=max_workers,
            worker_restarts=worker_restarts, worker_launch=worker_launch,
            external_workers_timeout=external_workers_timeout)
        self.worker = TrainingWorker(self._lock, self.stage, self.runner.run, self.runner.fail)

    # ------------------------------------------------------------------ events

    def handle(self, event: events_pb2.Event) -> None:
        kind = payload_kind(event)
        if kind == "job_submitted":
            self.trainings.check_job_id(event.job_id)
            # The spec of a job never changes; the first copy stored wins (redeliveries are harmless).
            if self.trainings.config(event.job_id) is None:
                self.trainings.save_config(event.job_id, event.job_submitted.spec.training)
        elif kind == "records_built":
            self._start(event.job_id, event.records_built.records_uri, None, from_event=True)
        elif kind == "cancel_requested":
            self._cancel(event.job_id, event.cancel_requested.reason, from_event=True)

    # ------------------------------------------------------------------ API

    def start(self, job_id: str, records_uri: str, config: common_pb2.TrainingConfig | None = None) -> Training:
        return self._start(job_id, records_uri, config, from_event=False)

    def get(self, job_id: str) -> Training:
        self.trainings.check_job_id(job_id)
        training = self.trainings.load(job_id)
        if training is None:
            raise NotFound("training", job_id)
        with self._lock:
            return copy_of(training)

    def stop(self, job_id: str, reason: str = "stopped by user") -> Training:
        return self._cancel(job_id, reason, from_event=False)

    def resume(self) -> int:
        """Start-up: re-queues the jobs a previous process left QUEUED or RUNNING (RUNNING first)."""
        found = [training for training in self.trainings.load_all() if training.status in ACTIVE]
        found.sort(key=lambda t: t.status != Status.TRAINING_STATUS_RUNNING)
        self.worker.requeue([training.job_id for training in found])
        if found:
            log.info("resuming trainings", extra={"jobs": [t.job_id for t in found]})
        return len(found)

    def close(self, timeout: float = 120.0) -> None:
        """Stops the worker: a running job stops at the next step with a checkpoint and stays RUNNING, so
        the next trainer process resumes it."""
        self.worker.close(timeout)

    def wait(self, job_id: str, statuses: set[int], timeout: float = 300.0) -> Training:
        """Blocks until the job reaches one of `statuses` (tests, CLI)."""
        return self.trainings.wait(job_id, statuses, timeout)

    def check_worker(self) -> None:
        """Readiness: a worker that died inside this live process (jobs waiting, nobody training them)
        makes the service NOT_SERVING instead of silently holding its jobs."""
        self.worker.check()

    # ------------------------------------------------------------------ start / cancel

    def _start(self, job_id: str, records_uri: str, config: common_pb2.TrainingConfig | None,
               from_event: bool) -> Training:
        self.trainings.check_job_id(job_id)
        if not records_uri:
            raise InvalidArgument("records_uri", "is required: the records prefix the tfrecords service built")
        if from_event and self.stage.is_cancelled(job_id):  # cancelled before its records arrived
            stopped = Training(job_id=job_id, records_uri=records_uri, status=Status.TRAINING_STATUS_STOPPED,
                               error="cancelled before training started")
            self.trainings.save(stopped)
            self.stage.acknowledge_cancel(job_id)
            return copy_of(stopped)
        with self._lock:
            existing = self.trainings.load(job_id)
            if existing is not None:
                if existing.status == Status.TRAINING_STATUS_SUCCEEDED:
                    log.info("already trained; not training again", extra={"job_id": job_id})
                    return copy_of(existing)
                if existing.status in ACTIVE and self.worker.holds(job_id):
                    return copy_of(existing)
                if from_event and existing.status in (Status.TRAINING_STATUS_STOPPED, Status.TRAINING_STATUS_FAILED):
                    log.info("records built for a stopped or failed training; ignored", extra={"job_id": job_id})
                    return copy_of(existing)
        stored = self.trainings.config(job_id)
        if config is not None:
            self.trainings.save_config(job_id, config)
        elif stored is not None:
            config = stored
        elif from_event:
            log.warning("no job_submitted seen for this job; training with the default config",
                        extra={"job_id": job_id})
        training = Training(job_id=job_id, records_uri=records_uri, status=Status.TRAINING_STATUS_QUEUED)
        if existing is not None:  # a restart after STOPPED/FAILED keeps its checkpoint: it resumes
            training.last_checkpoint_uri = existing.last_checkpoint_uri
        try:
            training.config.CopyFrom(with_defaults(config))
        except InvalidArgument as exc:
            if not from_event:
                raise
            training.status, training.error = Status.TRAINING_STATUS_FAILED, exc.message
            self.trainings.save(training)
            self.events.invalid_config(job_id, exc.message)
            return copy_of(training)
        self.trainings.save(training)
        self.worker.enqueue(job_id)
        log.info("training queued", extra={"job_id": job_id, "records_uri": records_uri})
        return copy_of(training)

    def _cancel(self, job_id: str, reason: str, from_event: bool) -> Training:
        self.trainings.check_job_id(job_id)
        with self._lock:
            training = self.trainings.load(job_id)
            if training is None:
                if not from_event:
                    raise NotFound("training", job_id)
                # Cancelled before its records were built: remember it so a late records_built is ignored.
                changed = Training(job_id=job_id, status=Status.TRAINING_STATUS_STOPPED,
                                   error=f"cancelled before training started: {reason}")
                announce = False
            elif training.status in TERMINAL:
                if from_event:
                    return copy_of(training)
                raise FailedPrecondition(f"training {job_id!r} already ended as {Status.Name(training.status)}; "
                                         f"only queued or running trainings can be stopped")
            elif self.worker.is_active(job_id):  # the worker checkpoints, then publishes job_cancelled
                self.worker.stop_active("cancel")
                log.info("stop requested", extra={"job_id": job_id, "reason": reason})
                return copy_of(training)
            else:  # queued (or left RUNNING by an earlier process and not picked up yet)
                self.worker.dequeue(job_id)
                changed = copy_of(training)
                changed.status = Status.TRAINING_STATUS_STOPPED
                changed.error = f"cancelled: {reason}"
                announce = True
        self.trainings.save(changed)
        if announce:
            self.events.cancelled(job_id, changed.last_checkpoint_uri)
        return copy_of(changed)
