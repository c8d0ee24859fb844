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
"""

from __future__ import annotations

import collections
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from google.protobuf import json_format

from classforge.v1 import common_pb2, events_pb2, trainer_service_pb2
from services.common.artefacts import model_prefix
from services.common.durations import parse_duration
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.common.events import EventBus, new_event, payload_kind
from services.common.stage_work import Stage
from services.common.storage import ObjectNotFound, ObjectStore, check_key
from services.trainer import export, metrics
from services.trainer.config import to_json, with_defaults
from services.trainer.data import TrainingData, open_records
from services.trainer.loop import Hooks, Trainer
from services.trainer.recipe import (
    BudgetPlan,
    Hardware,
    budget_text,
    chosen_fields,
    detect_hardware,
    facts_of,
    plan_training,
)

log = logging.getLogger("classforge.trainer")

Training = trainer_service_pb2.Training
Status = trainer_service_pb2.TrainingStatus
TERMINAL = {Status.TRAINING_STATUS_SUCCEEDED, Status.TRAINING_STATUS_FAILED, Status.TRAINING_STATUS_STOPPED}
ACTIVE = {Status.TRAINING_STATUS_QUEUED, Status.TRAINING_STATUS_RUNNING}
STATE_PREFIX = "state/trainer/"
KINDS = ["job_submitted", "records_built", "cancel_requested"]

DataOpener = Callable[[str, common_pb2.TrainingConfig, Path], TrainingData]


class TrainerDomain:
    def __init__(self, bus: EventBus, store: ObjectStore, *, work_root: str | Path, progress_seconds: float = 10.0,
                 producer: str = "trainer", open_data: DataOpener | None = None, outage_window_s: float = 180.0,
                 retry_seconds: float = 5.0, heartbeat_seconds: float = 30.0, hardware: Hardware | None = None):
        self.bus = bus
        self.store = store
        self.producer = producer
        self.stage = Stage(bus, store, common_pb2.JOB_STAGE_TRAINING, producer, heartbeat_seconds=heartbeat_seconds)
        self.work_root = Path(work_root)
        self.progress_seconds = progress_seconds
        self.outage_window_s = outage_window_s
        self.retry_seconds = retry_seconds
        self.open_data = open_data or (lambda uri, config, cache: open_records(store, uri, config, cache))
        self._hardware = hardware  # detected when the first plan needs it
        self._lock = threading.Condition()
        self._trainings: dict[str, Training] = {}
        self._queue: collections.deque[str] = collections.deque()
        self._active: str | None = None
        self._stop = threading.Event()
        self._stop_reason = ""
        self._closing = False
        self._worker: threading.Thread | None = None

    # ------------------------------------------------------------------ persistence

    def _key(self, job_id: str, name: str) -> str:
        return f"{STATE_PREFIX}{job_id}/{name}"

    def _check_job_id(self, job_id: str) -> None:
        if not job_id:
            raise InvalidArgument("job_id", "is required")
        check_key(self._key(job_id, "training.pb"), "job_id")
        if "/" in job_id:
            raise InvalidArgument("job_id", f"{job_id!r} must not contain '/'")

    def _save(self, training: Training) -> None:
        self.store.put_bytes(self._key(training.job_id, "training.pb"), training.SerializeToString())
        with self._lock:
            self._trainings[training.job_id] = training
            self._lock.notify_all()

    def _load(self, job_id: str) -> Training | None:
        with self._lock:
            cached = self._trainings.get(job_id)
        if cached is not None:
            return cached
        try:
            training = Training.FromString(self.store.get_bytes(self._key(job_id, "training.pb")))
        except ObjectNotFound:
            return None
        with self._lock:
            return self._trainings.setdefault(job_id, training)

    def _copy(self, training: Training) -> Training:
        copy = Training()
        copy.CopyFrom(training)
        return copy

    def stored_config(self, job_id: str) -> common_pb2.TrainingConfig | None:
        try:
            return common_pb2.TrainingConfig.FromString(self.store.get_bytes(self._key(job_id, "config.pb")))
        except ObjectNotFound:
            return None

    # ------------------------------------------------------------------ events

    def handle(self, event: events_pb2.Event) -> None:
        kind = payload_kind(event)
        if kind == "job_submitted":
            self._check_job_id(event.job_id)
            # The spec of a job never changes; the first copy stored wins (redeliveries are harmless).
            if self.stored_config(event.job_id) is None:
                self.store.put_bytes(self._key(event.job_id, "config.pb"),
                                     event.job_submitted.spec.training.SerializeToString())
        elif kind == "records_built":
            self._start(event.job_id, event.records_built.records_uri, None, from_event=True)
        elif kind == "cancel_requested":
            self._cancel(event.job_id, event.cancel_requested.reason, from_event=True)

    # ------------------------------------------------------------------ API

    def start(self, job_id: str, records_uri: str, config: common_pb2.TrainingConfig | None = None) -> Training:
        return self._start(job_id, records_uri, config, from_event=False)

    def get(self, job_id: str) -> Training:
        self._check_job_id(job_id)
        training = self._load(job_id)
        if training is None:
            raise NotFound("training", job_id)
        with self._lock:
            return self._copy(training)

    def stop(self, job_id: str, reason: str = "stopped by user") -> Training:
        return self._cancel(job_id, reason, from_event=False)

    def resume(self) -> int:
        """Start-up: re-queues the jobs a previous process left QUEUED or RUNNING (RUNNING first)."""
        found = []
        for info in self.store.list(STATE_PREFIX):
            if info.key.endswith("/training.pb"):
                training = Training.FromString(self.store.get_bytes(info.key))
                with self._lock:
                    self._trainings[training.job_id] = training
                if training.status in ACTIVE:
                    found.append(training)
        found.sort(key=lambda t: t.status != Status.TRAINING_STATUS_RUNNING)
        with self._lock:
            for training in found:
                if training.job_id not in self._queue and training.job_id != self._active:
                    self._queue.append(training.job_id)
            self._ensure_worker()
            self._lock.notify_all()
        if found:
            log.info("resuming trainings", extra={"jobs": [t.job_id for t in found]})
        return len(found)

    def close(self, timeout: float = 120.0) -> None:
        """Stops the worker: a running job stops at the next step with a checkpoint and stays RUNNING, so
        the next trainer process resumes it."""
        with self._lock:
            self._closing = True
            if self._active is not None:
                self._stop_reason = "shutdown"
                self._stop.set()
            self._lock.notify_all()
            worker = self._worker
        if worker is not None:
            worker.join(timeout)

    def wait(self, job_id: str, statuses: set[int], timeout: float = 300.0) -> Training:
        """Blocks until the job reaches one of `statuses` (tests, CLI)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                training = self._trainings.get(job_id)
                if training is not None and training.status in statuses:
                    return self._copy(training)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"training {job_id} did not reach {statuses} in {timeout}s "
                                       f"(now {training.status if training else None})")
                self._lock.wait(min(remaining, 1.0))

    # ------------------------------------------------------------------ start / cancel

    def _start(self, job_id: str, records_uri: str, config: common_pb2.TrainingConfig | None,
               from_event: bool) -> Training:
        self._check_job_id(job_id)
        if not records_uri:
            raise InvalidArgument("records_uri", "is required: the records prefix the tfrecords service built")
        if from_event and self.stage.is_cancelled(job_id):  # cancelled before its records arrived
            stopped = Training(job_id=job_id, records_uri=records_uri, status=Status.TRAINING_STATUS_STOPPED,
                               error="cancelled before training started")
            self._save(stopped)
            self.stage.acknowledge_cancel(job_id)
            return self._copy(stopped)
        with self._lock:
            existing = self._load(job_id)
            if existing is not None:
                if existing.status == Status.TRAINING_STATUS_SUCCEEDED:
                    log.info("already trained; not training again", extra={"job_id": job_id})
                    return self._copy(existing)
                if existing.status in ACTIVE and (job_id == self._active or job_id in self._queue):
                    return self._copy(existing)
                if from_event and existing.status in (Status.TRAINING_STATUS_STOPPED, Status.TRAINING_STATUS_FAILED):
                    log.info("records built for a stopped or failed training; ignored", extra={"job_id": job_id})
                    return self._copy(existing)
        stored = self.stored_config(job_id)
        if config is not None:
            self.store.put_bytes(self._key(job_id, "config.pb"), config.SerializeToString())
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
            self._save(training)
            self._publish(job_id, stage_failed=events_pb2.StageFailed(
                stage=common_pb2.JOB_STAGE_TRAINING, message=f"invalid training config: {exc.message}"))
            return self._copy(training)
        self._save(training)
        with self._lock:
            self._queue.append(job_id)
            self._ensure_worker()
            self._lock.notify_all()
        log.info("training queued", extra={"job_id": job_id, "records_uri": records_uri})
        return self._copy(training)

    def _cancel(self, job_id: str, reason: str, from_event: bool) -> Training:
        self._check_job_id(job_id)
        with self._lock:
            training = self._load(job_id)
            if training is None:
                if not from_event:
                    raise NotFound("training", job_id)
                # Cancelled before its records were built: remember it so a late records_built is ignored.
                changed = Training(job_id=job_id, status=Status.TRAINING_STATUS_STOPPED,
                                   error=f"cancelled before training started: {reason}")
                announce = False
            elif training.status in TERMINAL:
                if from_event:
                    return self._copy(training)
                raise FailedPrecondition(f"training {job_id!r} already ended as {Status.Name(training.status)}; "
                                         f"only queued or running trainings can be stopped")
            elif job_id == self._active:  # the worker checkpoints, then publishes job_cancelled
                self._stop_reason = "cancel"
                self._stop.set()
                log.info("stop requested", extra={"job_id": job_id, "reason": reason})
                return self._copy(training)
            else:  # queued (or left RUNNING by an earlier process and not picked up yet)
                if job_id in self._queue:
                    self._queue.remove(job_id)
                changed = self._copy(training)
                changed.status = Status.TRAINING_STATUS_STOPPED
                changed.error = f"cancelled: {reason}"
                announce = True
        self._save(changed)
        if announce:
            self._publish(job_id, job_cancelled=events_pb2.JobCancelled(
                stage=common_pb2.JOB_STAGE_TRAINING, checkpoint_uri=changed.last_checkpoint_uri))
        return self._copy(changed)

    # ------------------------------------------------------------------ worker

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="trainer-worker", daemon=True)
            self._worker.start()
            threading.Thread(target=self._beat_for_queued, name="trainer-queue-heartbeats", daemon=True).start()

    def check_worker(self) -> None:
        """Readiness: a worker that died inside this live process (jobs waiting, nobody training them)
        makes the service NOT_SERVING instead of silently holding its jobs."""
        with self._lock:
            waiting = bool(self._queue) or self._active is not None
            dead = self._worker is not None and not self._worker.is_alive() and not self._closing
        if waiting and dead:
            raise RuntimeError("the training worker thread has died; jobs are waiting")

    def _beat_for_queued(self) -> None:
        """Jobs waiting behind the one training still make progress: they are queued, not lost."""
        worker = self._worker
        while worker is not None and worker.is_alive():
            with self._lock:
                queued = list(self._queue)
            for position, job_id in enumerate(queued, start=1):
                self.stage.heartbeat(job_id, f"queued for training, position {position} of {len(queued)}")
            time.sleep(self.stage.heartbeat_seconds)

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._lock.wait()
                if self._closing:
                    return
                job_id = self._queue.popleft()
                self._active = job_id
                self._stop = threading.Event()
                self._stop_reason = ""
            try:
                with self.stage.heartbeats(job_id, lambda: "training"):
                    self._run(job_id)
            except Exception as exc:  # noqa: BLE001 - one job's failure must not stop the worker
                log.exception("training crashed", extra={"job_id": job_id})
                try:
                    self._fail(job_id, f"the trainer crashed: {type(exc).__name__}: {getattr(exc, 'message', exc)}")
                except Exception:  # noqa: BLE001 - Kafka is down too: the jobs service's deadline ends the job
                    log.exception("could not report the failure", extra={"job_id": job_id})
            finally:
                with self._lock:
                    self._active = None
                metrics.RUNNING.labels(job_id).set(0)
                metrics.idle()

    def _update(self, job_id: str, change: Callable[[Training], None], persist: bool = True) -> Training:
        with self._lock:
            training = self._copy(self._trainings[job_id])
            change(training)
            if not persist:
                self._trainings[job_id] = training
                self._lock.notify_all()
        if persist:
            self._save(training)
        return training

    def _run(self, job_id: str) -> None:
        training = self._load(job_id)
        prefix = model_prefix(job_id)
        if self.store.exists(prefix + "manifest.json"):  # exported before a crash: only the event is missing
            self._complete(job_id, training, prefix)
            return

        def running(t: Training) -> None:
            t.status = Status.TRAINING_STATUS_RUNNING
            t.error = ""

        training = self._update(job_id, running)
        metrics.RUNNING.labels(job_id).set(1)
        workdir = self.work_root / job_id
        outage_started, checkpoint_at_failure = None, None
        started = time.monotonic()  # the time budget's clock
        while True:
            try:
                data = self.open_data(training.records_uri, training.config, workdir / "cache")
                if not training.plan.recipe:  # the first start: the data is known now, the plan is made once
                    training = self._plan(job_id, data)
                # A plan already sized by the budget (a resumed run) keeps its epochs.
                budget = 0.0 if training.plan.planned_epochs else parse_duration(training.config.time_budget)
                trainer = Trainer(training.config, data, self.store, prefix, workdir / "run",
                                  hooks=_Hooks(self, job_id), stop_event=self._stop,
                                  progress_seconds=self.progress_seconds, time_budget_seconds=budget,
                                  budget_started=started, recipe_fields=chosen_fields(training.plan.choices))
                result = trainer.run()
                seconds = round(result.training_seconds, 1)
                training = self._update(job_id, lambda t, s=seconds: setattr(t.plan, "actual_training_seconds", s),
                                        persist=False)
                if result.status == "succeeded" and self._stop_reason != "cancel":  # no export once cancelled
                    extra = {"job_id": job_id, "records_uri": training.records_uri,
                             "resumed_from": result.resumed_from, "early_stopped": result.early_stopped,
                             "initial_weights": result.initial_weights,
                             "plan": json_format.MessageToDict(training.plan, preserving_proto_field_name=True)}
                    export.publish(result.network, data.label_map(), to_json(training.config), result.history,
                                   training.config.input_size, self.store, prefix, workdir / "run", extra)
                break
            except Unavailable as exc:
                # Ride out an outage of up to outage_window_s; one that ends with progress starts a new window.
                checkpoint = self._load(job_id).last_checkpoint_uri
                if outage_started is None or checkpoint != checkpoint_at_failure:
                    outage_started, checkpoint_at_failure = time.monotonic(), checkpoint
                down_for = time.monotonic() - outage_started
                if down_for >= self.outage_window_s or self._closing:
                    return self._fail(job_id, f"a dependency was unavailable for {down_for:.0f}s (longer than "
                                              f"the {self.outage_window_s:.0f}s outage window): {exc.message}")
                delay = min(self.retry_seconds, max(0.5, self.outage_window_s - down_for))
                log.warning("dependency unavailable; retrying from the last checkpoint in %.1fs", delay,
                            extra={"job_id": job_id, "error": exc.message, "down_for_seconds": round(down_for)})
                if self._stop.wait(delay):
                    return self._stopped(job_id, "")
            except Exception as exc:  # noqa: BLE001 - reported as stage_failed with the reason
                log.exception("training failed", extra={"job_id": job_id})
                return self._fail(job_id, f"{type(exc).__name__}: {getattr(exc, 'message', exc)}")
        if result.status == "stopped" or self._stop_reason == "cancel":
            # A cancel that came with the last step still wins: a cancelled job is never completed.
            return self._stopped(job_id, result.checkpoint_uri)
        self._complete(job_id, self._load(job_id), prefix)
        shutil.rmtree(workdir, ignore_errors=True)

    def _plan(self, job_id: str, data: TrainingData) -> Training:
        """Chooses the effective config (services/trainer/recipe.py) from the spec's config, the data and
        this machine, saves it with the job and announces it (unless a time budget will size it first)."""
        if self._hardware is None:
            self._hardware = detect_hardware()
        plan = plan_training(self.stored_config(job_id), facts_of(data), self._hardware)
        log.info("training plan\n%s", plan.text(), extra={"job_id": job_id})

        def planned(t: Training) -> None:
            t.config.CopyFrom(plan.config)
            t.plan.CopyFrom(plan.to_proto())

        training = self._update(job_id, planned)
        if not plan.config.time_budget:
            self._publish(job_id, training_progress=events_pb2.TrainingProgress(plan=training.plan.text))
        return training

    def _budget_planned(self, job_id: str, budget: BudgetPlan, config: common_pb2.TrainingConfig,
                        measured: dict) -> None:
        def sized(t: Training) -> None:
            t.config.CopyFrom(config)
            t.plan.time_budget_seconds = parse_duration(config.time_budget)
            t.plan.measured_images_per_second = round(measured["images_per_second"], 1)
            t.plan.measured_eval_images_per_second = round(measured["eval_images_per_second"], 1)
            t.plan.planned_training_seconds = round(measured["spent_seconds"] + budget.planned_training_seconds, 1)
            t.plan.evaluation_margin_seconds = round(budget.evaluation_margin_seconds, 1)
            t.plan.planned_epochs = config.full_stage.epochs + (
                0 if config.head_stage.skip else config.head_stage.epochs)
            t.plan.text += "\n" + budget_text(t.plan.time_budget_seconds, budget, measured)

        training = self._update(job_id, sized)
        log.info("time budget planned\n%s", training.plan.text, extra={"job_id": job_id})
        self._publish(job_id, training_progress=events_pb2.TrainingProgress(plan=training.plan.text))

    def _stopped(self, job_id: str, checkpoint_uri: str) -> None:
        if self._stop_reason == "cancel":
            def stopped(t: Training) -> None:
                t.status = Status.TRAINING_STATUS_STOPPED
                t.error = "cancelled"
                t.last_checkpoint_uri = checkpoint_uri or t.last_checkpoint_uri

            training = self._update(job_id, stopped)
            self._publish(job_id, job_cancelled=events_pb2.JobCancelled(
                stage=common_pb2.JOB_STAGE_TRAINING, checkpoint_uri=training.last_checkpoint_uri))
            metrics.RUNS.labels("cancelled").inc()
        else:  # shutdown: stays RUNNING, resumed by the next process from this checkpoint
            self._update(job_id, lambda t: setattr(t, "last_checkpoint_uri", checkpoint_uri or t.last_checkpoint_uri))
            log.info("training paused for shutdown", extra={"job_id": job_id, "checkpoint": checkpoint_uri})

    def _complete(self, job_id: str, training: Training, prefix: str) -> None:
        model = common_pb2.ModelRef(job_id=job_id, uri=self.store.uri(prefix + "saved_model") + "/")
        history_uri = self.store.uri(prefix + "history.json")
        self._publish(job_id, training_completed=events_pb2.TrainingCompleted(
            model=model, history_uri=history_uri, records_uri=training.records_uri))

        def done(t: Training) -> None:
            t.status = Status.TRAINING_STATUS_SUCCEEDED
            t.model.CopyFrom(model)
            t.history_uri = history_uri

        self._update(job_id, done)
        metrics.RUNS.labels("succeeded").inc()
        log.info("training completed", extra={"job_id": job_id, "model": model.uri})

    def _fail(self, job_id: str, message: str) -> None:
        """The job fails even when its state cannot be saved (the store may be what failed): the event
        goes first, through Kafka; GetTraining answers from memory."""
        def failed(t: Training) -> None:
            t.status = Status.TRAINING_STATUS_FAILED
            t.error = message

        metrics.RUNS.labels("failed").inc()
        try:
            self.stage.fail(job_id, message)
        finally:
            training = self._update(job_id, failed, persist=False)
            try:
                self._save(training)
            except Exception:  # noqa: BLE001 - reported above; the job has ended either way
                log.warning("could not save the failed training's state", extra={"job_id": job_id}, exc_info=True)

    def _publish(self, job_id: str, **payload) -> None:
        self.bus.publish(new_event(job_id, self.producer, **payload))


class _Hooks(Hooks):
    def __init__(self, domain: TrainerDomain, job_id: str):
        self.domain = domain
        self.job_id = job_id

    def progress(self, progress: events_pb2.TrainingProgress, epoch_end: bool) -> None:
        metrics.observe(progress)
        self.domain._update(self.job_id, lambda t: t.progress.CopyFrom(progress), persist=epoch_end)
        self.domain._publish(self.job_id, training_progress=progress)

    def checkpoint(self, uri: str, state: dict) -> None:
        self.domain._update(self.job_id, lambda t: setattr(t, "last_checkpoint_uri", uri))

    def planned(self, budget: BudgetPlan, config: common_pb2.TrainingConfig, measured: dict) -> None:
        self.domain._budget_planned(self.job_id, budget, config, measured)
