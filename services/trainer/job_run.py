"""One queued job's run, on the worker's thread: plan it (once, when its data is known), train it
(riding out an outage of the store or the bus from the last checkpoint), export the model, then end it
as completed, stopped (cancel), paused (shutdown: it stays RUNNING) or failed.

A job with `workers: N > 1` is trained by N worker processes (services/trainer/multiworker.py): this
replica plans it, starts them, and restarts the whole group from the chief's last checkpoint when one
dies (up to `worker_restarts` times) before the job fails."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from google.protobuf import json_format

from classforge.v1 import common_pb2, trainer_service_pb2
from services.common.artefacts import model_prefix
from services.common.durations import parse_duration
from services.common.errors import Unavailable
from services.common.stage_work import Stage
from services.common.storage import LocalObjectStore, ObjectStore
from services.trainer import export, metrics
from services.trainer.config import to_json
from services.trainer.data import TrainingData
from services.trainer.lease import FencedStore, LeaseLost, Leases
from services.trainer.loop import CheckpointStore, RunResult, Trainer
from services.trainer.multiworker import STORE_DIR_ENV, WorkerGroup, check_worker_count
from services.trainer.progress_events import RunHooks, TrainingEvents
from services.trainer.recipe import Hardware, chosen_fields, detect_hardware, facts_of, plan_training
from services.trainer.training_store import Training, TrainingStore
from services.trainer.worker import StopSignal

log = logging.getLogger("classforge.trainer")

Status = trainer_service_pb2.TrainingStatus
DataOpener = Callable[[str, common_pb2.TrainingConfig, Path], TrainingData]


class _OutageWindow:
    """How long a dependency has been unavailable. An outage that ends with progress (a newer checkpoint
    than at the last failure) starts a new window."""

    def __init__(self):
        self.started: float | None = None
        self.checkpoint: str | None = None

    def down_for(self, checkpoint: str) -> float:
        if self.started is None or checkpoint != self.checkpoint:
            self.started, self.checkpoint = time.monotonic(), checkpoint
        return time.monotonic() - self.started


class JobRunner:
    def __init__(self, trainings: TrainingStore, events: TrainingEvents, stage: Stage, store: ObjectStore, *,
                 work_root: Path, progress_seconds: float, outage_window_s: float, retry_seconds: float,
                 open_data: DataOpener, hardware: Hardware | None, is_closing: Callable[[], bool],
                 leases: Leases, max_workers: int = 4, worker_restarts: int = 1, worker_launch: str = "local",
                 external_workers_timeout: float = 86400.0):
        self.leases = leases  # every write of a run to the model prefix checks the job's lease first
        self.worker_launch = worker_launch
        self.external_workers_timeout = external_workers_timeout
        self.max_workers = max_workers
        self.worker_restarts = worker_restarts
        self.active_group: WorkerGroup | None = None  # the worker processes of the job training now, if any
        self.trainings = trainings
        self.events = events
        self.stage = stage
        self.store = store
        self.work_root = work_root
        self.progress_seconds = progress_seconds
        self.outage_window_s = outage_window_s
        self.retry_seconds = retry_seconds
        self.open_data = open_data
        self._hardware = hardware  # detected when the first plan needs it
        self._is_closing = is_closing

    def run(self, job_id: str, stop: StopSignal) -> None:
        training = self.trainings.load(job_id)
        prefix = model_prefix(job_id)
        if self.store.exists(prefix + "manifest.json"):  # exported before a crash: only the event is missing
            self._complete(job_id, training, prefix)
            return

        def running(t: Training) -> None:
            t.status = Status.TRAINING_STATUS_RUNNING
            t.error = ""

        training = self.trainings.update(job_id, running)
        metrics.RUNNING.labels(job_id).set(1)
        workdir = self.work_root / job_id
        result = self._train(job_id, training, stop, workdir)
        if result is None or stop.fenced:  # failed, stopped waiting out an outage, or taken over: reported
            return
        if result.status == "stopped" or stop.cancelled:
            # A cancel that came with the last step still wins: a cancelled job is never completed.
            return self._stopped(job_id, stop, result.checkpoint_uri)
        self._complete(job_id, self.trainings.load(job_id), prefix)
        shutil.rmtree(workdir, ignore_errors=True)

    def _train(self, job_id: str, training: Training, stop: StopSignal, workdir: Path) -> RunResult | None:
        """Trains and exports, again from the last checkpoint while a dependency is unavailable for less than
        the outage window. None when the job failed, or was stopped while waiting to retry."""
        outage = _OutageWindow()
        started = time.monotonic()  # the time budget's clock
        while True:
            try:
                data = self.open_data(training.records_uri, training.config, workdir / "cache")
                if not training.plan.recipe:  # the first start: the data is known now, the plan is made once
                    training = self._plan(job_id, data)
                workers = check_worker_count(training.config.workers, self.max_workers)
                if workers > 1:
                    return self._train_group(job_id, stop, workdir, workers)
                # A plan already sized by the budget (a resumed run) keeps its epochs.
                budget = 0.0 if training.plan.planned_epochs else parse_duration(training.config.time_budget)
                fenced = FencedStore(self.store, job_id, self.leases)
                trainer = Trainer(training.config, data, fenced, model_prefix(job_id), workdir / "run",
                                  hooks=RunHooks(self.trainings, self.events, job_id), stop_event=stop.event,
                                  progress_seconds=self.progress_seconds, time_budget_seconds=budget,
                                  budget_started=started, recipe_fields=chosen_fields(training.plan.choices))
                result = trainer.run()
                seconds = round(result.training_seconds, 1)
                training = self.trainings.update(
                    job_id, lambda t, s=seconds: setattr(t.plan, "actual_training_seconds", s), persist=False)
                if result.status == "succeeded" and not stop.cancelled:  # no export once cancelled
                    self._export(job_id, training, result, data, workdir, fenced)
                return result
            except LeaseLost as exc:  # another replica has the job now: it reports, this one writes nothing
                log.warning("stopped: %s", exc.message, extra={"job_id": job_id})
                return None
            except Unavailable as exc:
                # Ride out an outage of up to outage_window_s; one that ends with progress starts a new window.
                down_for = outage.down_for(self.trainings.load(job_id).last_checkpoint_uri)
                if down_for >= self.outage_window_s or self._is_closing():
                    self.fail(job_id, f"a dependency was unavailable for {down_for:.0f}s (longer than "
                                      f"the {self.outage_window_s:.0f}s outage window): {exc.message}")
                    return None
                delay = min(self.retry_seconds, max(0.5, self.outage_window_s - down_for))
                log.warning("dependency unavailable; retrying from the last checkpoint in %.1fs", delay,
                            extra={"job_id": job_id, "error": exc.message, "down_for_seconds": round(down_for)})
                if stop.event.wait(delay):
                    self._stopped(job_id, stop, "")
                    return None
            except Exception as exc:  # noqa: BLE001 - reported as stage_failed with the reason
                log.exception("training failed", extra={"job_id": job_id})
                self.fail(job_id, f"{type(exc).__name__}: {getattr(exc, 'message', exc)}")
                return None

    def _export(self, job_id: str, training: Training, result: RunResult, data: TrainingData, workdir: Path,
                store: ObjectStore) -> None:
        export_run(store, job_id, training, result, data, workdir)

    def _train_group(self, job_id: str, stop: StopSignal, workdir: Path, workers: int) -> RunResult | None:
        """Trains on `workers` local processes (services/trainer/mwms_worker.py), which export the model
        themselves. A worker that dies ends the group; it is started again from the chief's last
        checkpoint up to `worker_restarts` times, then the job fails with the worker's reason. With
        external workers (a TFJob or indexed Job started for this job), waits for the chief's export."""
        if self.worker_launch == "external":
            return self._wait_for_external_workers(job_id, stop, workers)
        env = {STORE_DIR_ENV: str(self.store.local_path())} if isinstance(self.store, LocalObjectStore) else {}
        env["CLASSFORGE_TRAINER_WORK_DIR"] = str(workdir / "workers")
        failures: list[str] = []
        while True:
            # The worker processes write to the store directly, past FencedStore: a replica that lost the job's
            # lease must not start (or restart) them. LeaseLost ends the run like a fenced write does.
            self.leases.check_writable(job_id)
            self.active_group = group = WorkerGroup(job_id, workers, env=env, log_dir=workdir / "worker-logs")
            try:
                outcome = group.wait(stop.event)
            finally:
                self.active_group = None
            checkpoint = CheckpointStore(self.store, model_prefix(job_id), workdir).latest()
            checkpoint_uri = (self.store.uri(checkpoint["key"].rstrip("/")) + "/") if checkpoint else ""
            if checkpoint_uri:
                self.trainings.update(job_id, lambda t, u=checkpoint_uri: setattr(t, "last_checkpoint_uri", u))
            if outcome.status == "succeeded":
                if not self.store.exists(model_prefix(job_id) + "manifest.json"):
                    self.fail(job_id, f"the {workers} workers ended without the chief's export "
                                      f"({model_prefix(job_id)}manifest.json is missing)")
                    return None
                return RunResult("succeeded", None, [], checkpoint_uri)  # type: ignore[arg-type]
            if outcome.status == "stopped":
                return RunResult("stopped", None, [], checkpoint_uri)  # type: ignore[arg-type]
            failures.append(outcome.message)
            if len(failures) > self.worker_restarts:
                self.fail(job_id, f"multi-worker training failed {len(failures)} time(s); last: {outcome.message}")
                return None
            log.warning("a worker failed; restarting the group from the chief's last checkpoint",
                        extra={"job_id": job_id, "error": outcome.message, "checkpoint": checkpoint_uri})

    def _wait_for_external_workers(self, job_id: str, stop: StopSignal, workers: int) -> RunResult | None:
        manifest = model_prefix(job_id) + "manifest.json"
        log.info("waiting for the job's external workers (TFJob or indexed Job with CLASSFORGE_MWMS_JOB_ID=%s)",
                 job_id, extra={"job_id": job_id, "workers": workers})
        deadline = time.monotonic() + self.external_workers_timeout
        while not self.store.exists(manifest):
            if time.monotonic() >= deadline:
                self.fail(job_id, f"no export from the job's {workers} external workers within "
                                  f"{self.external_workers_timeout:.0f}s: is a TFJob or indexed Job running with "
                                  f"CLASSFORGE_MWMS_JOB_ID={job_id}?")
                return None
            if stop.event.wait(min(self.retry_seconds, 5.0)):
                return RunResult("stopped", None, [], "")  # type: ignore[arg-type]
        return RunResult("succeeded", None, [], "")  # type: ignore[arg-type]

    def _plan(self, job_id: str, data: TrainingData) -> Training:
        """Chooses the effective config (services/trainer/recipe.py) from the spec's config, the data and
        this machine, saves it with the job and announces it (unless a time budget will size it first)."""
        if self._hardware is None:
            self._hardware = detect_hardware()
        plan = plan_training(self.trainings.config(job_id), facts_of(data), self._hardware)
        log.info("training plan\n%s", plan.text(), extra={"job_id": job_id})

        def planned(t: Training) -> None:
            t.config.CopyFrom(plan.config)
            t.plan.CopyFrom(plan.to_proto())

        training = self.trainings.update(job_id, planned)
        if not plan.config.time_budget:
            self.events.plan(job_id, training.plan.text)
        return training

    def _stopped(self, job_id: str, stop: StopSignal, checkpoint_uri: str) -> None:
        if stop.cancelled:
            def stopped(t: Training) -> None:
                t.status = Status.TRAINING_STATUS_STOPPED
                t.error = "cancelled"
                t.last_checkpoint_uri = checkpoint_uri or t.last_checkpoint_uri

            training = self.trainings.update(job_id, stopped)
            self.events.cancelled(job_id, training.last_checkpoint_uri)
            metrics.RUNS.labels("cancelled").inc()
        else:  # shutdown: stays RUNNING, resumed by the next process from this checkpoint
            self.trainings.update(job_id,
                                  lambda t: setattr(t, "last_checkpoint_uri", checkpoint_uri or t.last_checkpoint_uri))
            log.info("training paused for shutdown", extra={"job_id": job_id, "checkpoint": checkpoint_uri})

    def _complete(self, job_id: str, training: Training, prefix: str) -> None:
        self.leases.verify(job_id)  # a replica that lost the job never announces it
        model = common_pb2.ModelRef(job_id=job_id, uri=self.store.uri(prefix + "saved_model") + "/")
        history_uri = self.store.uri(prefix + "history.json")
        self.events.completed(job_id, model, history_uri, training.records_uri)

        def done(t: Training) -> None:
            t.status = Status.TRAINING_STATUS_SUCCEEDED
            t.model.CopyFrom(model)
            t.history_uri = history_uri

        self.trainings.update(job_id, done)
        metrics.RUNS.labels("succeeded").inc()
        log.info("training completed", extra={"job_id": job_id, "model": model.uri})

    def fail(self, job_id: str, message: str) -> None:
        """The job fails even when its state cannot be saved (the store may be what failed): the event
        goes first, through Kafka; GetTraining answers from memory."""
        def failed(t: Training) -> None:
            t.status = Status.TRAINING_STATUS_FAILED
            t.error = message

        if self.leases.lost(job_id):  # the failure is this replica's: the job lives on elsewhere
            log.warning("not failing a job another replica took over: %s", message, extra={"job_id": job_id})
            return
        metrics.RUNS.labels("failed").inc()
        try:
            self.stage.fail(job_id, message)
        finally:
            training = self.trainings.update(job_id, failed, persist=False)
            try:
                self.trainings.save(training)
            except Exception:  # noqa: BLE001 - reported above; the job has ended either way
                log.warning("could not save the failed training's state", extra={"job_id": job_id}, exc_info=True)


def export_run(store: ObjectStore, job_id: str, training: Training, result: RunResult, data: TrainingData,
               workdir: Path) -> None:
    """The model and what the evaluator and the model server read beside it, under models/<job>/
    (export.py); the manifest says where the run came from and what it planned. Also run by every
    worker of a multi-worker job (the non-chief ones into a store that is discarded)."""
    prefix = model_prefix(job_id)
    extra = {"job_id": job_id, "records_uri": training.records_uri,
             "resumed_from": result.resumed_from, "early_stopped": result.early_stopped,
             "initial_weights": result.initial_weights, "workers": max(training.config.workers, 1),
             "plan": json_format.MessageToDict(training.plan, preserving_proto_field_name=True)}
    export.publish(result.network, data.label_map(), to_json(training.config), result.history,
                   training.config.input_size, store, prefix, workdir / "run", extra)
