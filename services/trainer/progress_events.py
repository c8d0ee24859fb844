"""What the trainer tells the rest of the platform: its events out (`training_progress`, including the
plan; `training_completed`; `job_cancelled`; `stage_failed` for a bad config), and the mapping from a
run's Trainer callbacks to the job's saved state and those events."""

from __future__ import annotations

import logging

from classforge.v1 import common_pb2, events_pb2
from services.common.durations import parse_duration
from services.common.events import EventBus, new_event
from services.trainer import metrics
from services.trainer.loop import Hooks
from services.trainer.recipe import BudgetPlan, budget_text
from services.trainer.training_store import Training, TrainingStore

log = logging.getLogger("classforge.trainer")


class TrainingEvents:
    def __init__(self, bus: EventBus, producer: str):
        self.bus = bus
        self.producer = producer

    def _publish(self, job_id: str, **payload) -> None:
        self.bus.publish(new_event(job_id, self.producer, **payload))

    def progress(self, job_id: str, progress: events_pb2.TrainingProgress) -> None:
        self._publish(job_id, training_progress=progress)

    def plan(self, job_id: str, text: str) -> None:
        """The plan is announced as a progress event that carries only its text."""
        self._publish(job_id, training_progress=events_pb2.TrainingProgress(plan=text))

    def completed(self, job_id: str, model: common_pb2.ModelRef, history_uri: str, records_uri: str) -> None:
        self._publish(job_id, training_completed=events_pb2.TrainingCompleted(
            model=model, history_uri=history_uri, records_uri=records_uri))

    def cancelled(self, job_id: str, checkpoint_uri: str) -> None:
        self._publish(job_id, job_cancelled=events_pb2.JobCancelled(
            stage=common_pb2.JOB_STAGE_TRAINING, checkpoint_uri=checkpoint_uri))

    def invalid_config(self, job_id: str, message: str) -> None:
        self._publish(job_id, stage_failed=events_pb2.StageFailed(
            stage=common_pb2.JOB_STAGE_TRAINING, message=f"invalid training config: {message}"))


class RunHooks(Hooks):
    """One job's Trainer callbacks: progress is kept with the job (saved at epoch ends), set on the gauges
    and published; a checkpoint is remembered so that a restart resumes from it; the plan a time budget
    sized is saved and announced."""

    def __init__(self, trainings: TrainingStore, events: TrainingEvents, job_id: str):
        self.trainings = trainings
        self.events = events
        self.job_id = job_id

    def progress(self, progress: events_pb2.TrainingProgress, epoch_end: bool) -> None:
        metrics.observe(progress)
        self.trainings.update(self.job_id, lambda t: t.progress.CopyFrom(progress), persist=epoch_end)
        self.events.progress(self.job_id, progress)

    def checkpoint(self, uri: str, state: dict) -> None:
        self.trainings.update(self.job_id, lambda t: setattr(t, "last_checkpoint_uri", uri))

    def planned(self, budget: BudgetPlan, config: common_pb2.TrainingConfig, measured: dict) -> None:
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

        training = self.trainings.update(self.job_id, sized)
        log.info("time budget planned\n%s", training.plan.text, extra={"job_id": self.job_id})
        self.events.plan(self.job_id, training.plan.text)
