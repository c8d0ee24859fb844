"""Validation of a JobSpec before anything is published. Each problem raises InvalidArgument
naming the field by its path in the request (e.g. `spec.dataset.val_fraction`), so the user
knows exactly what to fix.

Every rule a stage would apply later is checked here, at submit, so that a job is never accepted
only to fail minutes later in ingest or the trainer. The trainer's rules live in
services/trainer/config.py (`with_defaults`/`validate`); services do not import each other, so the
constants both apply are shared in services/common/training_options.py, and the dataset rules in
services/common/dataset_options.py. A zero field means "the stage's default"
(proto3 cannot tell unset from zero), so every rule accepts 0 unless said otherwise.
"""

from __future__ import annotations

import math
import re

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from classforge.v1 import common_pb2
from services.common.dataset_options import IngestOptions
from services.common.durations import parse_duration
from services.common.errors import InvalidArgument, shown
from services.common.job_uri import job_from_uri
from services.common.training_options import (
    DEFAULT_BACKBONE,
    DEFAULT_CROP_ASPECT,
    DEFAULT_MAX_WORKERS,
    PROJECT_BACKBONES,
    RECIPES,
    check_workers,
)

MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # fullmatch: '$' would let a trailing newline in

# Images travel by reference, never inside the spec: anything near these sizes is a mistake or an attack.
MAX_SPEC_BYTES = 64 * 1024
MAX_STRING_BYTES = 1024
MAX_REPEATED = 64
MAX_EPOCHS = 10_000

MAX_LEARNING_RATE = 10.0


def _in_range(field: str, value: float, low: float, high: float, *,
              low_open: bool = False, high_open: bool = False) -> None:
    if value < low or value > high or (low_open and value == low) or (high_open and value == high):
        bracket = ("(" if low_open else "[", ")" if high_open else "]")
        raise InvalidArgument(field, f"must be in {bracket[0]}{low:g}, {high:g}{bracket[1]}, got {value:g}")


def _non_negative(field: str, value: float) -> None:
    if value < 0:
        raise InvalidArgument(field, f"must not be negative, got {value:g}")


def _relative_path(field: str, value: str) -> None:
    if value.startswith("/") or ".." in value.split("/") or "\\" in value or "\x00" in value:
        raise InvalidArgument(field, f"must be a relative path without '..', got {shown(value)}")


def check_every_field(message: Message, path: str) -> None:
    """Rules for every field of a message, walked over its descriptors so that a field added to the
    proto later is covered without a change here: floats finite, strings at most 1 KiB, enum values
    defined (proto3 keeps an unknown number as a plain int), repeated fields at most 64 entries.
    Only set fields are visited: a zero value always passes. (JobSpec has no map fields.)"""
    for field, value in message.ListFields():
        where = f"{path}.{field.name}"
        if not field.is_repeated:
            _check_value(field, value, where)
            continue
        if len(value) > MAX_REPEATED:
            raise InvalidArgument(where, f"at most {MAX_REPEATED} entries, got {len(value)}")
        for i, item in enumerate(value):
            _check_value(field, item, f"{where}[{i}]")


def _check_value(field: FieldDescriptor, value: object, where: str) -> None:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        check_every_field(value, where)
    elif kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE) and not math.isfinite(value):
        raise InvalidArgument(where, f"must be a finite number, got {value}")
    elif kind in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        size = len(value.encode() if isinstance(value, str) else value)
        if size > MAX_STRING_BYTES:
            raise InvalidArgument(where, f"at most {MAX_STRING_BYTES} bytes, got {size}")
    elif kind == FieldDescriptor.TYPE_ENUM and value not in field.enum_type.values_by_number:
        names = ", ".join(field.enum_type.values_by_name)
        raise InvalidArgument(where, f"{value} is not a {field.enum_type.name}; use one of {names}")


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


def validate_training(config: common_pb2.TrainingConfig, field: str = "spec.training",
                      max_workers: int = DEFAULT_MAX_WORKERS) -> None:
    problem = check_workers(config, max_workers)
    if problem:
        raise InvalidArgument(f"{field}.workers", problem)
    if config.recipe.strip().lower() not in ("", *RECIPES):
        raise InvalidArgument(f"{field}.recipe", f"unknown recipe {shown(config.recipe)}; use one of "
                                                 f"{', '.join(RECIPES)} (or leave it empty: auto unless training "
                                                 f"fields are set)")
    parse_duration(config.time_budget, f"{field}.time_budget")
    if config.input_size and not 16 <= config.input_size <= 1024:
        raise InvalidArgument(f"{field}.input_size", f"must be between 16 and 1024 pixels, got {config.input_size}")
    _in_range(f"{field}.batch_size", config.batch_size, 0, 4096)
    _check_backbone(config, field)
    _in_range(f"{field}.width_multiplier", config.width_multiplier, 0, 4)  # 0 means 1.0
    _in_range(f"{field}.dropout", config.dropout, 0, 1, high_open=True)
    _in_range(f"{field}.label_smoothing", config.label_smoothing, 0, 1, high_open=True)
    _in_range(f"{field}.momentum", config.momentum, 0, 1, high_open=True)
    _non_negative(f"{field}.center_loss_weight", config.center_loss_weight)
    # A negative weight_decay or warmup_epochs means "off" to the trainer (zero means its default), so
    # neither has a lower bound; weight_decay is already known to be finite.
    if config.warmup_epochs > MAX_EPOCHS:
        raise InvalidArgument(f"{field}.warmup_epochs", f"must be at most {MAX_EPOCHS}, got {config.warmup_epochs}")
    for name in ("validate_every_epochs", "early_stopping_patience"):
        _in_range(f"{field}.{name}", getattr(config, name), 0, MAX_EPOCHS)
    _non_negative(f"{field}.max_steps_per_epoch", config.max_steps_per_epoch)
    _check_stages(config, field)
    _check_augmentation(config.augmentation, f"{field}.augmentation")
    _check_task_losses(config, field)
    job_from_uri(config.initial_weights_uri, f"{field}.initial_weights_uri")  # job://<id> well formed


def _check_backbone(config: common_pb2.TrainingConfig, field: str) -> None:
    backbone = config.backbone or DEFAULT_BACKBONE
    if backbone in PROJECT_BACKBONES:
        return
    name = common_pb2.Backbone.Name(backbone)  # a defined value: check_every_field ran first
    for option in ("group_norm", "squeeze_excitation"):
        if getattr(config, option):
            raise InvalidArgument(f"{field}.{option}", f"is available for resnet18/resnet34/small_cnn, not {name}")
    if config.input_size and config.input_size < 32:
        raise InvalidArgument(f"{field}.input_size",
                              f"{name} needs at least 32 pixels; use resnet18/small_cnn for smaller images")


def _check_stages(config: common_pb2.TrainingConfig, field: str) -> None:
    for name in ("head_stage", "full_stage"):
        stage = getattr(config, name)
        _in_range(f"{field}.{name}.epochs", stage.epochs, 0, MAX_EPOCHS)
        if stage.learning_rate:  # 0 means the trainer's default for the optimizer
            _in_range(f"{field}.{name}.learning_rate", stage.learning_rate, 0, MAX_LEARNING_RATE, low_open=True)
    # The trainer skips the head stage by itself when there are no initial weights and no head_stage
    # was given (a head-only stage on a random backbone gains nothing).
    head_skipped = config.head_stage.skip or not (config.HasField("head_stage") or config.initial_weights_uri)
    if config.full_stage.skip and head_skipped:
        raise InvalidArgument(f"{field}.full_stage.skip", "the head stage is skipped too: nothing would be trained")


def _check_augmentation(aug: common_pb2.Augmentation, field: str) -> None:
    _optional_range(aug, field, "crop_scale_min", "crop_scale_max", ceiling=1)
    _optional_range(aug, field, "jpeg_quality_min", "jpeg_quality_max", ceiling=100)
    _optional_range(aug, field, "rescale_min", "rescale_max", ceiling=1)
    aspect_min = aug.crop_aspect_min or DEFAULT_CROP_ASPECT[0]
    aspect_max = aug.crop_aspect_max or DEFAULT_CROP_ASPECT[1]
    if aspect_min <= 0:
        raise InvalidArgument(f"{field}.crop_aspect_min", f"must be greater than 0, got {aspect_min:g}")
    if aspect_max < aspect_min:
        raise InvalidArgument(f"{field}.crop_aspect_max",
                              f"must be at least crop_aspect_min {aspect_min:g}, got {aspect_max:g}")
    _in_range(f"{field}.box_jitter", aug.box_jitter, 0, 0.5, high_open=True)
    for name, top in (("brightness", 1), ("contrast", 1), ("saturation", 1), ("hue", 0.5)):
        _in_range(f"{field}.{name}", getattr(aug, name), 0, top)
    for i, size in enumerate(aug.multi_scale_sizes):
        _in_range(f"{field}.multi_scale_sizes[{i}]", size, 16, 1024)


def _optional_range(aug: common_pb2.Augmentation, field: str, low_name: str, high_name: str, *,
                    ceiling: float) -> None:
    """A [low, high] augmentation range that is off while `low` is 0. When `low` is set the trainer
    fills an unset `high` with `ceiling`; the range must then satisfy 0 < low <= high <= ceiling."""
    low, high = getattr(aug, low_name), getattr(aug, high_name)
    if not low:
        if high:
            raise InvalidArgument(f"{field}.{low_name}", f"is 0, which turns this augmentation off: "
                                                         f"set it too, or leave {high_name} unset")
        return
    _in_range(f"{field}.{low_name}", low, 0, ceiling, low_open=True)
    _in_range(f"{field}.{high_name}", high or ceiling, low, ceiling)


def _check_task_losses(config: common_pb2.TrainingConfig, field: str) -> None:
    seen = set()
    for i, task in enumerate(config.task_losses):
        if not task.task:
            raise InvalidArgument(f"{field}.task_losses[{i}].task", "must name a task")
        if task.task in seen:
            raise InvalidArgument(f"{field}.task_losses[{i}].task", f"{shown(task.task)} appears twice")
        seen.add(task.task)
        _non_negative(f"{field}.task_losses[{i}].weight", task.weight)


def validate_gates(gates: common_pb2.EvaluationGates, field: str = "spec.gates") -> None:
    for name in ("min_accuracy", "min_class_recall", "max_regression", "max_class_regression"):
        _in_range(f"{field}.{name}", getattr(gates, name), 0, 1)
    for i, bound in enumerate(gates.confusion_bounds):
        where = f"{field}.confusion_bounds[{i}]"
        if not bound.true_label or not bound.predicted_label:
            raise InvalidArgument(where, "name both true_label and predicted_label")
        _in_range(f"{where}.max_rate", bound.max_rate, 0, 1)


def validate_job_spec(spec: common_pb2.JobSpec, max_workers: int = DEFAULT_MAX_WORKERS) -> None:
    """Raises InvalidArgument for the first problem found in the spec; `max_workers` is the deployment's
    CLASSFORGE_TRAINER_MAX_WORKERS."""
    size = spec.ByteSize()  # first, so that nothing huge is walked or quoted
    if size > MAX_SPEC_BYTES:
        raise InvalidArgument("spec", f"is {size} bytes serialized; at most {MAX_SPEC_BYTES} are allowed "
                                      f"(images travel by reference, never inside the spec)")
    check_every_field(spec, "spec")
    if not spec.HasField("source"):
        raise InvalidArgument("spec.source", "is required: say where the images come from")
    validate_source(spec.source)
    validate_dataset_options(spec.dataset)
    validate_training(spec.training, max_workers=max_workers)
    validate_gates(spec.gates)
    if spec.deploy.model_name and not MODEL_NAME.fullmatch(spec.deploy.model_name):
        raise InvalidArgument("spec.deploy.model_name",
                              f"use lowercase letters, digits, '-' and '_' (got {shown(spec.deploy.model_name)})")
