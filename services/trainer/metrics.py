"""Prometheus metrics of the trainer (prefix classforge_trainer_). One run trains at a time per trainer
process, so the gauges describe that run; `job` on the info gauge says which one."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from classforge.v1 import events_pb2

STAGE = Gauge("classforge_trainer_stage", "Training stage of the current run (1 head only, 2 whole network, "
                                          "0 idle).")
EPOCH = Gauge("classforge_trainer_epoch", "Epoch within the current stage (1-based).")
STEP = Gauge("classforge_trainer_step", "Optimiser steps taken by the current run.")
IMAGES_PER_SECOND = Gauge("classforge_trainer_images_per_second", "Training throughput of the current epoch.")
LOSS = Gauge("classforge_trainer_loss", "Mean training loss of the current epoch so far, by kind "
                                        "(total = data + regularization).", ["kind"])
METRIC = Gauge("classforge_trainer_metric", "Last epoch metrics (accuracy, val_accuracy, val_loss, …).", ["name"])
RUNNING = Gauge("classforge_trainer_running", "1 while a run trains, by job id.", ["job"])
RUNS = Counter("classforge_trainer_runs_total", "Finished runs by outcome.", ["outcome"])


def observe(progress: events_pb2.TrainingProgress) -> None:
    STAGE.set(progress.stage)
    EPOCH.set(progress.epoch)
    STEP.set(progress.step)
    IMAGES_PER_SECOND.set(progress.images_per_second)
    LOSS.labels("total").set(progress.total_loss)
    LOSS.labels("data").set(progress.data_loss)
    LOSS.labels("regularization").set(progress.regularization_loss)
    for name, value in progress.metrics.items():
        if "/" not in name:  # per-task duplicates stay in events and history
            METRIC.labels(name).set(value)


def idle() -> None:
    STAGE.set(0)
    IMAGES_PER_SECOND.set(0)
