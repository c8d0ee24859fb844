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
job is durably queued. Idempotency: a job that is SUCCEEDED, or whose models/<job>/manifest.json exists
(the export finished), is never trained again; a redelivered records_built for a queued or running job
changes nothing.

Many replicas, each job trained once (lease.py says why a lease in the object store rather than Kafka
partition ownership): every replica of the consumer group queues the jobs whose records_built it
consumes, and owns each through a lease, state/trainer/<job>/lease.json, taken before the job is
queued and renewed every third of `lease_seconds` while it is queued or running. A job whose lease
another live replica holds is left to it. Every third of `lease_seconds` each replica also sweeps the
store: a QUEUED or RUNNING job whose lease expired (its replica died) is taken over, RUNNING first, and
continues from its last checkpoint; `resume()` at start-up is the first sweep. A replica that finds its
lease replaced (it was paused or cut off past expiry) drops the job: it stops at the next step, and every
write of the run (checkpoints, export, the job's state) checks the lease first, so two replicas never
write to one model prefix. A cancel reaches the replica that consumes the job's partition, which may not
be the one training it: the holder also polls the cancel marker on each renewal. Waiting jobs publish
heartbeats with their place in this replica's queue (the jobs service shows them QUEUED).

TrainerDomain composes: the jobs' state (training_store.TrainingStore), the worker thread that trains
the queue (worker.TrainingWorker), one job's run (job_run.JobRunner) and the events out with the mapping
of a run's progress to them (progress_events).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from classforge.v1 import common_pb2, events_pb2, trainer_service_pb2
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.events import EventBus, payload_kind
from services.common.stage_work import Stage
from services.common.storage import ObjectStore
from services.trainer.config import with_defaults
from services.trainer.data import open_records
from services.trainer.job_run import DataOpener, JobRunner
from services.trainer.lease import LEASE_NAME, LeaseLost, Leases, default_replica_id
from services.trainer.progress_events import TrainingEvents
from services.trainer.recipe import Hardware
from services.trainer.training_store import STATE_PREFIX, Training, TrainingStore, copy_of
from services.trainer.worker import StopSignal, TrainingWorker

log = logging.getLogger("classforge.trainer")

Status = trainer_service_pb2.TrainingStatus
TERMINAL = {Status.TRAINING_STATUS_SUCCEEDED, Status.TRAINING_STATUS_FAILED, Status.TRAINING_STATUS_STOPPED}
ACTIVE = {Status.TRAINING_STATUS_QUEUED, Status.TRAINING_STATUS_RUNNING}
KINDS = ["job_submitted", "records_built", "cancel_requested"]


class TrainerDomain:
    def __init__(self, bus: EventBus, store: ObjectStore, *, work_root: str | Path, progress_seconds: float = 10.0,
                 producer: str = "trainer", open_data: DataOpener | None = None, outage_window_s: float = 180.0,
                 retry_seconds: float = 5.0, heartbeat_seconds: float = 30.0, hardware: Hardware | None = None,
                 replica_id: str = "", lease_seconds: float = 30.0, clock: Callable[[], float] = time.time,
                 max_workers: int = 4, worker_restarts: int = 1, worker_launch: str = "local",
                 external_workers_timeout: float = 86400.0):
        self.stage = Stage(bus, store, common_pb2.JOB_STAGE_TRAINING, producer, heartbeat_seconds=heartbeat_seconds)
        self.store = store
        self.leases = Leases(store, replica_id or default_replica_id(), lease_seconds, clock)
        self._lock = threading.Condition()  # one lock for the jobs' state and the queue (TrainingStore)
        self.trainings = TrainingStore(store, self._lock, guard=self.leases.check_writable)
        self.events = TrainingEvents(bus, producer)
        self.runner = JobRunner(
            self.trainings, self.events, self.stage, store, work_root=Path(work_root),
            progress_seconds=progress_seconds, outage_window_s=outage_window_s, retry_seconds=retry_seconds,
            open_data=open_data or (lambda uri, config, cache: open_records(store, uri, config, cache)),
            hardware=hardware, is_closing=lambda: self.worker.closing, leases=self.leases,
            max_workers=max_workers, worker_restarts=worker_restarts, worker_launch=worker_launch,
            external_workers_timeout=external_workers_timeout)
        self.worker = TrainingWorker(self._lock, self.stage, self.runner.run, self.runner.fail,
                                     may_run=self._may_run, ran=self._ran, replica=self.leases.holder)
        self._settled: set[str] = set()  # jobs seen ended: the sweep never reads them again
        self._keeper_stop = threading.Event()
        self._keeper: threading.Thread | None = None

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
        # A job another replica trains changes in the store, not in this replica's cache.
        training = self.trainings.load(job_id) if self.leases.mine(job_id) else self.trainings.load_fresh(job_id)
        if training is None:
            raise NotFound("training", job_id)
        with self._lock:
            return copy_of(training)

    def stop(self, job_id: str, reason: str = "stopped by user") -> Training:
        return self._cancel(job_id, reason, from_event=False)

    def resume(self) -> int:
        """Start-up: takes over the jobs left QUEUED or RUNNING whose lease has expired or was released
        (a previous process of this replica, or a dead one), RUNNING first; then keeps the leases (renewal,
        and the sweep for jobs of replicas that die later). Returns how many jobs it took."""
        taken = self.take_over()
        self._ensure_keeper()
        return taken

    def take_over(self) -> int:
        """One sweep of the store: every QUEUED or RUNNING job that no live replica holds is leased and
        queued here (RUNNING first: they continue from their checkpoint)."""
        names: dict[str, set[str]] = {}
        for info in self.store.list(STATE_PREFIX):
            job_id, _, name = info.key[len(STATE_PREFIX):].partition("/")
            names.setdefault(job_id, set()).add(name)
        found = []
        for job_id, files in names.items():
            if "training.pb" not in files or job_id in self._settled or self.worker.holds(job_id) \
                    or self.leases.held(job_id):
                continue
            if LEASE_NAME in files:
                lease = self.leases.read(job_id)
                if lease is not None and lease.done:
                    self._settled.add(job_id)
                    continue
                if lease is not None and lease.holder != self.leases.holder \
                        and lease.expires_at > self.leases.clock():
                    continue  # a live replica has it
            training = self.trainings.load_fresh(job_id)
            if training is None or training.status not in ACTIVE:
                self._settled.add(job_id)
                continue
            if self.leases.acquire(job_id) is None:
                continue  # another replica was quicker
            training = self.trainings.load_fresh(job_id)  # what the previous holder last wrote
            if training is None or training.status not in ACTIVE:
                self.leases.release(job_id, done=True)
                continue
            found.append(training)
        found.sort(key=lambda t: t.status != Status.TRAINING_STATUS_RUNNING)
        self.worker.requeue([training.job_id for training in found])
        if found:
            log.info("taking over trainings", extra={"jobs": [t.job_id for t in found]})
        return len(found)

    def keep_leases(self) -> None:
        """One round of the keeper: renews this replica's leases (dropping the jobs whose lease another
        replica took), stops the ones that were cancelled meanwhile, then sweeps for orphaned jobs."""
        for job_id in self.leases.held_jobs():
            try:
                self.leases.renew(job_id)
            except LeaseLost as exc:
                log.warning("another replica took the job over; dropping it: %s", exc.message,
                            extra={"job_id": job_id})
                self.worker.drop(job_id)
                self.trainings.evict(job_id)
                continue
            except Exception:  # noqa: BLE001 - the store is down: writes are refused once the margin is gone
                log.warning("could not renew the lease", extra={"job_id": job_id}, exc_info=True)
                continue
            try:
                reason = self.stage.cancellations.reason(job_id)
                if reason is not None and self.worker.holds(job_id):
                    self._cancel(job_id, reason, from_event=True)
            except Exception:  # noqa: BLE001 - polled again on the next round
                log.warning("could not check for a cancel", extra={"job_id": job_id}, exc_info=True)
        try:
            self.take_over()
        except Exception:  # noqa: BLE001 - swept again on the next round
            log.warning("could not sweep for jobs to take over", exc_info=True)

    def _ensure_keeper(self) -> None:
        with self._lock:
            if self._keeper is not None or self._keeper_stop.is_set():
                return
            self._keeper = threading.Thread(target=self._keep, name="trainer-leases", daemon=True)
            self._keeper.start()

    def _keep(self) -> None:
        while not self._keeper_stop.wait(self.leases.margin):
            self.keep_leases()

    def _may_run(self, job_id: str) -> bool:
        """Just before the worker starts a job: is its lease still this replica's?"""
        try:
            self.leases.verify(job_id)
        except LeaseLost as exc:
            log.info("not training a job another replica holds: %s", exc.message, extra={"job_id": job_id})
            self.trainings.evict(job_id)
            return False
        return True

    def _ran(self, job_id: str, stop: StopSignal) -> None:
        """After a run: an ended job's lease is released for good; one paused by a shutdown, or left
        active by an error, is released for another replica (or this one's next sweep) to take over."""
        if self.leases.held(job_id) is None:
            return
        training = self.trainings.load(job_id)
        self.leases.release(job_id, done=training is not None and training.status in TERMINAL)

    def close(self, timeout: float = 120.0) -> None:
        """Stops the worker: a running job stops at the next step with a checkpoint and stays RUNNING,
        and every lease is released, so another replica (or the next process) takes the jobs over at once."""
        self._keeper_stop.set()
        keeper = self._keeper
        if keeper is not None:  # a round in flight must not renew (or take) a lease after its release
            keeper.join(min(timeout, 30.0))
        self.worker.close(timeout)
        for job_id in self.leases.held_jobs():
            self.leases.release(job_id, done=False)

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
        existing = self.trainings.load_fresh(job_id)  # another replica may have changed it
        with self._lock:
            if existing is not None:
                if existing.status == Status.TRAINING_STATUS_SUCCEEDED:
                    log.info("already trained; not training again", extra={"job_id": job_id})
                    return copy_of(existing)
                if existing.status in ACTIVE and self.worker.holds(job_id):
                    return copy_of(existing)
                if from_event and existing.status in (Status.TRAINING_STATUS_STOPPED, Status.TRAINING_STATUS_FAILED):
                    log.info("records built for a stopped or failed training; ignored", extra={"job_id": job_id})
                    return copy_of(existing)
        self._ensure_keeper()
        if self.leases.acquire(job_id) is None:
            log.info("another trainer replica holds this job; leaving it to that one", extra={"job_id": job_id})
            return copy_of(existing) if existing is not None else Training(
                job_id=job_id, records_uri=records_uri, status=Status.TRAINING_STATUS_QUEUED)
        if existing is not None and existing.status in ACTIVE:  # left by a replica that is gone: continue it
            self.worker.requeue([job_id])
            return copy_of(existing)
        try:
            return self._queue_new(job_id, records_uri, config, from_event, existing)
        except BaseException:
            if not self.worker.holds(job_id):  # not queued after all (the store failed): free it for a retry
                self.leases.release(job_id, done=False)
            raise

    def _queue_new(self, job_id: str, records_uri: str, config: common_pb2.TrainingConfig | None,
                   from_event: bool, existing: Training | None) -> Training:
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
            self.leases.release(job_id, done=True)
            self.events.invalid_config(job_id, exc.message)
            return copy_of(training)
        self.trainings.save(training)
        self.worker.enqueue(job_id)
        log.info("training queued", extra={"job_id": job_id, "records_uri": records_uri})
        return copy_of(training)

    def _cancel(self, job_id: str, reason: str, from_event: bool) -> Training:
        self.trainings.check_job_id(job_id)
        # An ended training is answered before the lease is touched: its worker may be releasing the
        # lease right now (a race that made acquire fail), and an ended job must not take a new lease.
        ended = self.trainings.load_fresh(job_id)
        if ended is not None and ended.status in TERMINAL:
            return self._already_ended(ended, from_event)
        if not self.worker.holds(job_id) and self.leases.acquire(job_id) is None:
            # Another replica trains it (a takeover moved it off the partition's consumer): that one
            # sees the cancel marker on its next lease renewal and stops the job.
            log.info("cancel left to the replica that holds the job", extra={"job_id": job_id})
            return copy_of(self.trainings.load_fresh(job_id) or Training(job_id=job_id))
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
                return self._already_ended(training, from_event)
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
        self.leases.release(job_id, done=True)
        if announce:
            self.events.cancelled(job_id, changed.last_checkpoint_uri)
        return copy_of(changed)

    @staticmethod
    def _already_ended(training: Training, from_event: bool) -> Training:
        if from_event:  # a redelivered cancel: nothing to do
            return copy_of(training)
        raise FailedPrecondition(f"training {training.job_id!r} already ended as {Status.Name(training.status)}; "
                                 f"only queued or running trainings can be stopped")
