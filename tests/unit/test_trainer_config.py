"""Trainer configuration: defaults that work, YAML/JSON loading, validation naming the field."""

import pytest

from classforge.v1 import common_pb2
from services.common.errors import InvalidArgument
from services.trainer.config import load_config, parse_config, with_defaults


def test_empty_config_gets_working_defaults():
    c = with_defaults(common_pb2.TrainingConfig())
    assert c.input_size == 224 and c.batch_size == 32
    assert c.backbone == common_pb2.BACKBONE_RESNET18
    assert c.optimizer == common_pb2.OPTIMIZER_SGD and c.momentum == pytest.approx(0.9)
    assert c.lr_schedule == common_pb2.LR_SCHEDULE_COSINE and c.warmup_epochs == 1
    assert c.weight_decay == pytest.approx(5e-4)
    # No initial weights: a head-only stage on a random backbone is skipped; the full stage runs.
    assert c.head_stage.skip and not c.full_stage.skip and c.full_stage.epochs == 10
    assert c.full_stage.learning_rate == pytest.approx(0.1 * 32 / 256)
    assert c.augmentation.horizontal_flip and c.augmentation.crop_scale_min == pytest.approx(0.25)


def test_initial_weights_turn_on_the_head_stage_and_small_inputs_get_the_small_stem():
    c = with_defaults(common_pb2.TrainingConfig(initial_weights_uri="models/j0/", input_size=28))
    assert not c.head_stage.skip and c.head_stage.epochs == 2 and c.head_stage.freeze_backbone
    assert c.small_input_stem


def test_negative_means_off_for_fields_where_zero_is_meaningful():
    c = with_defaults(common_pb2.TrainingConfig(weight_decay=-1, warmup_epochs=-1))
    assert c.weight_decay == 0 and c.warmup_epochs == 0


def test_yaml_with_short_enum_names(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("backbone: small_cnn\noptimizer: adamw\nlr_schedule: step\ninput_size: 32\n"
                    "augmentation: {crop_scale_min: 0.5, jpeg_quality_min: 60}\nfull_stage: {epochs: 3}\n")
    c = with_defaults(load_config(path))
    assert c.backbone == common_pb2.BACKBONE_SMALL_CNN and c.optimizer == common_pb2.OPTIMIZER_ADAMW
    assert c.lr_schedule == common_pb2.LR_SCHEDULE_STEP and c.full_stage.epochs == 3
    assert c.augmentation.crop_scale_max == 1.0 and c.augmentation.jpeg_quality_max == 100
    assert not c.augmentation.horizontal_flip  # a given augmentation block: unset means off


@pytest.mark.parametrize("fields, field", [
    ({"input_size": 8}, "config.input_size"),
    ({"backbone": "resnet50", "group_norm": True}, "config.group_norm"),
    ({"label_smoothing": 1.5}, "config.label_smoothing"),
    ({"augmentation": {"crop_scale_min": 0.9, "crop_scale_max": 0.5}}, "config.augmentation.crop_scale_min"),
    ({"head_stage": {"skip": True}, "full_stage": {"skip": True}}, "config.full_stage.skip"),
    ({"task_losses": [{"task": "a"}, {"task": "a"}]}, "config.task_losses[1].task"),
])
def test_invalid_configs_name_the_field(fields, field):
    with pytest.raises(InvalidArgument) as error:
        with_defaults(parse_config(fields))
    assert error.value.field == field


def test_unknown_field_is_rejected():
    with pytest.raises(InvalidArgument, match="nonsense"):
        parse_config({"nonsense": 1})
