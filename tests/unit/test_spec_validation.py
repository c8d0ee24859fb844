import pytest

from classforge.v1 import common_pb2
from services.common.errors import InvalidArgument
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
