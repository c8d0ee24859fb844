import math

import pytest

from classforge.v1 import common_pb2
from services.common.errors import InvalidArgument, shown
from services.jobs.spec_validation import validate_job_spec


def valid_spec() -> common_pb2.JobSpec:
    return common_pb2.JobSpec(source=common_pb2.DataSource(local_path="/data/images"))


def test_minimal_spec_is_valid():
    validate_job_spec(valid_spec())


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda s: s.ClearField("source"), "spec.source"),
    (lambda s: s.source.ClearField("local_path"), "spec.source"),
    (lambda s: setattr(s.source, "object_prefix", "../etc"), "spec.source.object_prefix"),
    (lambda s: setattr(s.source, "list_file", "/abs/list.txt"), "spec.source.list_file"),
    (lambda s: setattr(s.dataset, "max_class_ratio", 0.5), "spec.dataset.max_class_ratio"),
    (lambda s: setattr(s.dataset, "val_fraction", 1.0), "spec.dataset.val_fraction"),
    (lambda s: (setattr(s.dataset, "val_fraction", 0.5), setattr(s.dataset, "test_fraction", 0.5)),
     "spec.dataset.test_fraction"),
    (lambda s: setattr(s.dataset, "max_pixels", -1), "spec.dataset.max_pixels"),
    (lambda s: setattr(s.training, "input_size", 8), "spec.training.input_size"),
    (lambda s: setattr(s.training, "batch_size", -2), "spec.training.batch_size"),
    (lambda s: setattr(s.training, "label_smoothing", 1.0), "spec.training.label_smoothing"),
    (lambda s: setattr(s.training.head_stage, "epochs", -1), "spec.training.head_stage.epochs"),
    (lambda s: (setattr(s.training.augmentation, "crop_scale_min", 0.9),
                setattr(s.training.augmentation, "crop_scale_max", 0.5)), "spec.training.augmentation.crop_scale_max"),
    (lambda s: s.training.augmentation.multi_scale_sizes.append(4),
     "spec.training.augmentation.multi_scale_sizes[0]"),
    (lambda s: s.training.task_losses.add(weight=1), "spec.training.task_losses[0].task"),
    (lambda s: setattr(s.gates, "min_accuracy", 1.5), "spec.gates.min_accuracy"),
    (lambda s: s.gates.confusion_bounds.add(true_label="cat", max_rate=0.1), "spec.gates.confusion_bounds[0]"),
    (lambda s: setattr(s.deploy, "model_name", "Bad Name"), "spec.deploy.model_name"),
])
def test_invalid_spec_names_the_field(mutate, field):
    spec = valid_spec()
    mutate(spec)
    with pytest.raises(InvalidArgument) as caught:
        validate_job_spec(spec)
    assert caught.value.field == field
    assert caught.value.message.startswith(field + ":")


# --- Everything a stage would reject is rejected at submit (issue #13 item 4) -------------------------------

MIB = 1024 * 1024


def rejected(spec: common_pb2.JobSpec) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        validate_job_spec(spec)
    return caught.value


def rejected_with(mutate) -> InvalidArgument:
    spec = valid_spec()
    mutate(spec)
    return rejected(spec)


def digits_spec() -> common_pb2.JobSpec:
    # A copy of tests/integration/test_end_to_end.py::digits_spec (that module needs the infrastructure).
    return common_pb2.JobSpec(
        display_name="e2e digits",
        source=common_pb2.DataSource(local_path="/tmp/digits"),
        dataset=common_pb2.DatasetOptions(val_fraction=0.15, test_fraction=0.15, seed=5),
        training=common_pb2.TrainingConfig(input_size=32, batch_size=32, backbone=common_pb2.BACKBONE_SMALL_CNN,
                                           full_stage=common_pb2.TrainingStage(epochs=3)),
        gates=common_pb2.EvaluationGates(min_accuracy=0.2),
        deploy=common_pb2.DeployOptions(deploy=True, model_name="digits"))


def demo_spec() -> common_pb2.JobSpec:
    # What services/demo.py submits: the automatic recipe with a budget, plus what embedded.run sets.
    training = common_pb2.TrainingConfig(recipe="auto", time_budget="3m", mirror_invariant=True)
    return common_pb2.JobSpec(
        display_name="fashion-mnist demo",
        source=common_pb2.DataSource(local_path="/tmp/fashion-mnist"),
        dataset=common_pb2.DatasetOptions(max_class_ratio=5, val_fraction=0.05, test_fraction=1 / 7, seed=7),
        training=training,
        gates=common_pb2.EvaluationGates(min_accuracy=0.85, min_class_recall=0.5),
        deploy=common_pb2.DeployOptions(deploy=True))


def test_normal_specs_are_valid():
    validate_job_spec(digits_spec())
    validate_job_spec(demo_spec())


def test_the_trainer_defaults_and_the_cpu_recipe_are_valid():
    from services.trainer.config import cpu_recipe_small_images, with_defaults

    for training in (cpu_recipe_small_images(), with_defaults(common_pb2.TrainingConfig()),
                     with_defaults(common_pb2.TrainingConfig(initial_weights_uri="models/j0/", input_size=28))):
        spec = valid_spec()
        spec.training.CopyFrom(training)
        validate_job_spec(spec)


@pytest.mark.parametrize("training", [
    # Negative means "off" to the trainer where zero means its default.
    common_pb2.TrainingConfig(weight_decay=-1, warmup_epochs=-1),
    # An unset upper end is filled by the trainer when the lower end is set.
    common_pb2.TrainingConfig(augmentation=common_pb2.Augmentation(
        crop_scale_min=0.5, jpeg_quality_min=60, rescale_min=0.5)),
    # An explicit head stage runs even without initial weights, so skipping the full stage is fine.
    common_pb2.TrainingConfig(head_stage=common_pb2.TrainingStage(), full_stage=common_pb2.TrainingStage(skip=True)),
    common_pb2.TrainingConfig(backbone=common_pb2.BACKBONE_RESNET50, input_size=32, width_multiplier=4,
                              optimizer=common_pb2.OPTIMIZER_ADAMW, lr_schedule=common_pb2.LR_SCHEDULE_STEP,
                              seed=-(2**63), full_stage=common_pb2.TrainingStage(epochs=10_000, learning_rate=10)),
    # Recipes by name, any case; budgets in seconds or as durations.
    common_pb2.TrainingConfig(recipe="auto", time_budget="10m", mirror_invariant=True),
    common_pb2.TrainingConfig(recipe="ImageNet-GPU", time_budget="600"),
    common_pb2.TrainingConfig(time_budget="1h30m"),
])
def test_what_the_trainer_accepts_is_accepted(training):
    from services.trainer.config import with_defaults

    with_defaults(training)  # the trainer accepts it ...
    spec = valid_spec()
    spec.training.CopyFrom(training)
    validate_job_spec(spec)  # ... so submit does too


@pytest.mark.parametrize(("fields", "field"), [
    (dict(backbone=99), "backbone"),
    (dict(backbone=common_pb2.BACKBONE_RESNET50, group_norm=True), "group_norm"),
    (dict(backbone=common_pb2.BACKBONE_MOBILENET_V2, squeeze_excitation=True), "squeeze_excitation"),
    (dict(backbone=common_pb2.BACKBONE_EFFICIENTNET_B0, input_size=28), "input_size"),
    (dict(width_multiplier=-1), "width_multiplier"),
    (dict(width_multiplier=4.5), "width_multiplier"),
    (dict(dropout=1), "dropout"),
    (dict(optimizer=42), "optimizer"),
    (dict(lr_schedule=7), "lr_schedule"),
    (dict(max_steps_per_epoch=-1), "max_steps_per_epoch"),
    (dict(early_stopping_patience=-1), "early_stopping_patience"),
    (dict(full_stage=common_pb2.TrainingStage(learning_rate=-0.1)), "full_stage.learning_rate"),
    (dict(full_stage=common_pb2.TrainingStage(learning_rate=11)), "full_stage.learning_rate"),
    (dict(head_stage=common_pb2.TrainingStage(learning_rate=math.inf)), "head_stage.learning_rate"),
    (dict(full_stage=common_pb2.TrainingStage(skip=True)), "full_stage.skip"),
    (dict(head_stage=common_pb2.TrainingStage(skip=True), full_stage=common_pb2.TrainingStage(skip=True)),
     "full_stage.skip"),
    (dict(augmentation=common_pb2.Augmentation(crop_scale_min=0.5, crop_aspect_min=2, crop_aspect_max=1)),
     "augmentation.crop_aspect_max"),
    (dict(augmentation=common_pb2.Augmentation(crop_scale_min=0.5, crop_aspect_min=-1)),
     "augmentation.crop_aspect_min"),
    (dict(augmentation=common_pb2.Augmentation(box_jitter=0.5)), "augmentation.box_jitter"),
    (dict(augmentation=common_pb2.Augmentation(brightness=-0.1)), "augmentation.brightness"),
    (dict(augmentation=common_pb2.Augmentation(contrast=1.5)), "augmentation.contrast"),
    (dict(augmentation=common_pb2.Augmentation(hue=0.6)), "augmentation.hue"),
    (dict(augmentation=common_pb2.Augmentation(jpeg_quality_min=90, jpeg_quality_max=50)),
     "augmentation.jpeg_quality_max"),
    (dict(augmentation=common_pb2.Augmentation(rescale_min=1.5)), "augmentation.rescale_min"),
    (dict(augmentation=common_pb2.Augmentation(rescale_min=0.8, rescale_max=0.5)), "augmentation.rescale_max"),
    (dict(task_losses=[common_pb2.TaskLoss(task="a"), common_pb2.TaskLoss(task="a")]), "task_losses[1].task"),
    (dict(task_losses=[common_pb2.TaskLoss(task="a", weight=-1)]), "task_losses[0].weight"),
    (dict(initial_weights_uri="job://../models"), "initial_weights_uri"),
    (dict(initial_weights_uri="job://"), "initial_weights_uri"),
    (dict(recipe="fast"), "recipe"),
    (dict(time_budget="soon"), "time_budget"),
    (dict(time_budget="0s"), "time_budget"),
])
def test_what_the_trainer_rejects_is_rejected_at_submit(fields, field):
    from services.trainer.config import with_defaults

    training = common_pb2.TrainingConfig(**fields)
    with pytest.raises(InvalidArgument):
        with_defaults(training)  # the trainer would fail the job later ...
    spec = valid_spec()
    spec.training.CopyFrom(training)
    assert rejected(spec).field == "spec.training." + field  # ... so submit refuses it


@pytest.mark.parametrize("size", [2 * MIB, 61 * MIB])
def test_a_huge_spec_is_rejected_first_without_echoing_it(size):
    error = rejected_with(lambda s: setattr(s, "display_name", "x" * size))
    assert error.field == "spec"
    assert len(error.message) < 300


def test_the_whole_spec_is_bounded_even_when_every_field_is_small():
    # 40 bounds with two 1000-byte labels each: every string and the count within bounds, 80 KB in all.
    def many(s):
        for i in range(40):
            s.gates.confusion_bounds.add(true_label=f"{i:04d}" + "a" * 996, predicted_label="b" * 1000, max_rate=0.1)
    error = rejected_with(many)
    assert error.field == "spec" and len(error.message) < 300


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda s, v: setattr(s, "display_name", v), "spec.display_name"),
    (lambda s, v: setattr(s.deploy, "model_name", v), "spec.deploy.model_name"),
    (lambda s, v: setattr(s.source, "local_path", v), "spec.source.local_path"),
    (lambda s, v: setattr(s.source, "object_prefix", v), "spec.source.object_prefix"),
    (lambda s, v: setattr(s.source, "dataset_id", v), "spec.source.dataset_id"),
    (lambda s, v: setattr(s.source, "list_file", v), "spec.source.list_file"),
    (lambda s, v: setattr(s.training, "initial_weights_uri", v), "spec.training.initial_weights_uri"),
    (lambda s, v: s.training.task_losses.add(task=v), "spec.training.task_losses[0].task"),
    (lambda s, v: s.gates.confusion_bounds.add(true_label=v, predicted_label="b"),
     "spec.gates.confusion_bounds[0].true_label"),
    (lambda s, v: s.gates.confusion_bounds.add(true_label="a", predicted_label=v),
     "spec.gates.confusion_bounds[0].predicted_label"),
])
def test_strings_are_at_most_one_kib(mutate, field):
    error = rejected_with(lambda s: mutate(s, "é" * 513))  # 513 characters, 1026 bytes
    assert error.field == field
    assert len(error.message) < 300
    spec = valid_spec()
    mutate(spec, "a" * 1024)
    try:
        validate_job_spec(spec)
    except InvalidArgument as error:  # other rules may apply (a model name has its own), but not the length
        assert "bytes" not in error.message


def float_paths(descriptor, path="spec"):
    """The path of every singular float/double field under `descriptor`, found the way a new field would be."""
    for field in descriptor.fields:
        if field.is_repeated:
            continue
        if field.message_type is not None:
            yield from float_paths(field.message_type, f"{path}.{field.name}")
        elif field.type in (field.TYPE_FLOAT, field.TYPE_DOUBLE):
            yield f"{path}.{field.name}"


def set_path(spec: common_pb2.JobSpec, path: str, value) -> None:
    *parents, name = path.split(".")[1:]  # without the leading "spec"
    target = spec
    for parent in parents:
        target = getattr(target, parent)
    setattr(target, name, value)


FLOAT_PATHS = list(float_paths(common_pb2.JobSpec.DESCRIPTOR))


def test_the_float_walk_finds_the_known_fields():
    assert "spec.gates.min_accuracy" in FLOAT_PATHS and "spec.training.full_stage.learning_rate" in FLOAT_PATHS
    assert "spec.training.augmentation.hue" in FLOAT_PATHS and "spec.dataset.val_fraction" in FLOAT_PATHS


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("path", FLOAT_PATHS)
def test_every_float_must_be_finite(path, value):
    error = rejected_with(lambda s: set_path(s, path, value))
    assert error.field == path
    assert "finite" in error.message


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_floats_in_repeated_messages_must_be_finite(value):
    assert rejected_with(lambda s: s.training.task_losses.add(task="a", weight=value)).field == \
        "spec.training.task_losses[0].weight"
    assert rejected_with(lambda s: s.gates.confusion_bounds.add(true_label="a", predicted_label="b", max_rate=value)
                         ).field == "spec.gates.confusion_bounds[0].max_rate"


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda s: setattr(s.training, "backbone", 99), "spec.training.backbone"),
    (lambda s: setattr(s.training, "backbone", -1), "spec.training.backbone"),
    (lambda s: setattr(s.training, "optimizer", 42), "spec.training.optimizer"),
    (lambda s: setattr(s.training, "lr_schedule", 7), "spec.training.lr_schedule"),
])
def test_enum_values_must_be_defined(mutate, field):
    error = rejected_with(mutate)
    assert error.field == field
    assert "use one of" in error.message


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda s: s.training.augmentation.multi_scale_sizes.extend([32] * 65),
     "spec.training.augmentation.multi_scale_sizes"),
    (lambda s: [s.training.task_losses.add(task=f"t{i}") for i in range(65)], "spec.training.task_losses"),
    (lambda s: [s.gates.confusion_bounds.add(true_label=f"a{i}", predicted_label="b") for i in range(65)],
     "spec.gates.confusion_bounds"),
])
def test_repeated_fields_are_bounded(mutate, field):
    error = rejected_with(mutate)
    assert error.field == field
    assert "at most 64" in error.message


def test_64_entries_are_fine():
    spec = valid_spec()
    spec.training.augmentation.multi_scale_sizes.extend([32] * 64)
    for i in range(64):
        spec.training.task_losses.add(task=f"t{i}")
        spec.gates.confusion_bounds.add(true_label=f"a{i}", predicted_label="b", max_rate=0.5)
    validate_job_spec(spec)


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda s: setattr(s.training.full_stage, "learning_rate", math.inf), "spec.training.full_stage.learning_rate"),
    (lambda s: setattr(s.training.full_stage, "learning_rate", -1e-3), "spec.training.full_stage.learning_rate"),
    (lambda s: setattr(s.training.head_stage, "learning_rate", 1e6), "spec.training.head_stage.learning_rate"),
    (lambda s: setattr(s.training.full_stage, "epochs", 10_001), "spec.training.full_stage.epochs"),
    (lambda s: setattr(s.training, "warmup_epochs", 10_001), "spec.training.warmup_epochs"),
    (lambda s: setattr(s.training, "validate_every_epochs", -1), "spec.training.validate_every_epochs"),
    (lambda s: setattr(s.training, "early_stopping_patience", 10_001), "spec.training.early_stopping_patience"),
    (lambda s: setattr(s.training, "momentum", 1.0), "spec.training.momentum"),
    (lambda s: setattr(s.training, "momentum", -0.5), "spec.training.momentum"),
    (lambda s: setattr(s.training, "dropout", -0.1), "spec.training.dropout"),
    (lambda s: setattr(s.training, "width_multiplier", 8), "spec.training.width_multiplier"),
    (lambda s: setattr(s.training, "max_steps_per_epoch", -5), "spec.training.max_steps_per_epoch"),
    (lambda s: setattr(s.training.augmentation, "saturation", -1), "spec.training.augmentation.saturation"),
    (lambda s: setattr(s.training.augmentation, "hue", 0.51), "spec.training.augmentation.hue"),
    (lambda s: setattr(s.training.augmentation, "box_jitter", -0.1), "spec.training.augmentation.box_jitter"),
    (lambda s: setattr(s.training.augmentation, "crop_aspect_min", -1), "spec.training.augmentation.crop_aspect_min"),
    (lambda s: setattr(s.training.augmentation, "crop_aspect_max", 0.5), "spec.training.augmentation.crop_aspect_max"),
    (lambda s: setattr(s.training.augmentation, "crop_scale_max", 0.5), "spec.training.augmentation.crop_scale_min"),
    (lambda s: setattr(s.training.augmentation, "rescale_max", 0.5), "spec.training.augmentation.rescale_min"),
    (lambda s: setattr(s.training.augmentation, "rescale_min", -0.5), "spec.training.augmentation.rescale_min"),
    (lambda s: setattr(s.training.augmentation, "jpeg_quality_min", 101),
     "spec.training.augmentation.jpeg_quality_min"),
    (lambda s: setattr(s.gates, "min_class_recall", -0.1), "spec.gates.min_class_recall"),
    (lambda s: setattr(s.deploy, "model_name", "digits\n"), "spec.deploy.model_name"),
])
def test_training_ranges(mutate, field):
    assert rejected_with(mutate).field == field


def test_any_seed_is_fine():
    spec = valid_spec()
    spec.training.seed = -(2**63)
    spec.dataset.seed = 2**63 - 1
    validate_job_spec(spec)


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda s: setattr(s.deploy, "model_name", "A" * 1000), "spec.deploy.model_name"),
    (lambda s: setattr(s.source, "object_prefix", "../" + "a" * 1000), "spec.source.object_prefix"),
    (lambda s: setattr(s.source, "list_file", "/" + "\x01" * 1000), "spec.source.list_file"),
    (lambda s: [s.training.task_losses.add(task="t" * 1000) for _ in range(2)], "spec.training.task_losses[1].task"),
])
def test_quoted_values_are_cut(mutate, field):
    error = rejected_with(mutate)
    assert error.field == field
    assert len(error.message) < 300
    assert "…" in error.message


def test_shown_cuts_long_values_only():
    assert shown("Bad Name") == "'Bad Name'"
    assert shown(1.5) == "1.5"
    cut = shown("x" * (2 * MIB))
    assert len(cut) == 80 and cut.startswith("'xxx") and cut.endswith("…")
    assert len(shown("\x00" * 1000)) == 80
    assert len(shown(b"y" * 1000)) == 80
