"""Validation of a JobSpec before anything is published. Each problem raises InvalidArgument
naming the field by its path in the request (e.g. `spec.dataset.val_fraction`), so the user
knows exactly what to fix."""

from __future__ import annotations

import re

from classforge.v1 import common_pb2
from services.common.errors import InvalidArgument
from services.ingest.options import IngestOptions

MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def _in_range(field: str, value: float, low: float, high: float, *, high_open: bool = False) -> None:
    if value < low or value > high or (high_open and value == high):
        bracket = ")" if high_open else "]"
        raise InvalidArgument(field, f"must be in [{low:g}, {high:g}{bracket}, got {value:g}")


def _non_negative(field: str, value: float) -> None:
    if value < 0:
        raise InvalidArgument(field, f"must not be negative, got {value:g}")


def _relative_path(field: str, value: str) -> None:
    if value.startswith("/") or ".." in value.split("/") or "\\" in value or "\x00" in value:
        raise InvalidArgument(field, f"must be a relative path without '..', got {value!r}")


def validate_source(source: common_pb2.DataSource, field: str = "spec.source") -> None:
    kind = source.WhichOneof("source")
    if kind is None:
        raise InvalidArgument(field, "set one of object_prefix, dataset_id or local_path")
    if not getattr(source, kind).strip():
        raise InvalidArgument(f"{field}.{kind}", "must not be empty")
    if kind == "object_prefix":
        _relative_path(f"{field}.object_prefix", source.object_prefix)
    if source.list_file:
        _relative_path(f"{field}.list_file", source.list_file)


def validate_dataset_options(options: common_pb2.DatasetOptions, field: str = "spec.dataset") -> None:
    # One set of rules: the ones ingest applies when it prepares the dataset.
    IngestOptions.from_proto(options, field)


def validate_training(config: common_pb2.TrainingConfig, field: str = "spec.training") -> None:
    if config.input_size and not 16 <= config.input_size <= 1024:
        raise InvalidArgument(f"{field}.input_size", f"must be between 16 and 1024 pixels, got {config.input_size}")
    _in_range(f"{field}.batch_size", config.batch_size, 0, 4096)
    _in_range(f"{field}.label_smoothing", config.label_smoothing, 0, 1, high_open=True)
    for name in ("weight_decay", "center_loss_weight", "momentum", "warmup_epochs",
                 "validate_every_epochs", "early_stopping_patience"):
        _non_negative(f"{field}.{name}", getattr(config, name))
    for stage in ("head_stage", "full_stage"):
        _non_negative(f"{field}.{stage}.epochs", getattr(config, stage).epochs)
        _non_negative(f"{field}.{stage}.learning_rate", getattr(config, stage).learning_rate)
    aug = config.augmentation
    if aug.crop_scale_min or aug.crop_scale_max:
        _in_range(f"{field}.augmentation.crop_scale_min", aug.crop_scale_min, 0, 1)
        _in_range(f"{field}.augmentation.crop_scale_max", aug.crop_scale_max, aug.crop_scale_min, 1)
    if aug.jpeg_quality_min or aug.jpeg_quality_max:
        _in_range(f"{field}.augmentation.jpeg_quality_min", aug.jpeg_quality_min, 1, 100)
        _in_range(f"{field}.augmentation.jpeg_quality_max", aug.jpeg_quality_max, aug.jpeg_quality_min, 100)
    for i, size in enumerate(aug.multi_scale_sizes):
        _in_range(f"{field}.augmentation.multi_scale_sizes[{i}]", size, 16, 1024)
    for i, task in enumerate(config.task_losses):
        if not task.task:
            raise InvalidArgument(f"{field}.task_losses[{i}].task", "must name a task")
        _non_negative(f"{field}.task_losses[{i}].weight", task.weight)


def validate_gates(gates: common_pb2.EvaluationGates, field: str = "spec.gates") -> None:
    for name in ("min_accuracy", "min_class_recall", "max_regression", "max_class_regression"):
        _in_range(f"{field}.{name}", getattr(gates, name), 0, 1)
    for i, bound in enumerate(gates.confusion_bounds):
        where = f"{field}.confusion_bounds[{i}]"
        if not bound.true_label or not bound.predicted_label:
            raise InvalidArgument(where, "name both true_label and predicted_label")
        _in_range(f"{where}.max_rate", bound.max_rate, 0, 1)


def validate_job_spec(spec: common_pb2.JobSpec) -> None:
    """Raises InvalidArgument for the first problem found in the spec."""
    if not spec.HasField("source"):
        raise InvalidArgument("spec.source", "is required: say where the images come from")
    validate_source(spec.source)
    validate_dataset_options(spec.dataset)
    validate_training(spec.training)
    validate_gates(spec.gates)
    if spec.deploy.model_name and not MODEL_NAME.match(spec.deploy.model_name):
        raise InvalidArgument("spec.deploy.model_name",
                              f"use lowercase letters, digits, '-' and '_' (got {spec.deploy.model_name!r})")
