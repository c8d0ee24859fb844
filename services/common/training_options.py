"""The few TrainingConfig rules both the trainer (services/trainer/config.py, which fills and validates
a config) and jobs (services/jobs/spec_validation.py, which checks a JobSpec at submit) apply, written
once so that a spec is judged by the rules the trainer will apply."""

from __future__ import annotations

from classforge.v1 import common_pb2

# The named recipes (services/trainer/recipe.py); "" picks one by the rule described there.
RECIPES = ("auto", "imagenet-gpu")
# Group norm, SE blocks and inputs below 32 px exist only for the networks this project writes;
# keras.applications backbones build their own layers.
PROJECT_BACKBONES = frozenset({common_pb2.BACKBONE_RESNET18, common_pb2.BACKBONE_RESNET34,
                               common_pb2.BACKBONE_SMALL_CNN})
DEFAULT_BACKBONE = common_pb2.BACKBONE_RESNET18
DEFAULT_CROP_ASPECT = (3 / 4, 4 / 3)  # random resized crop's aspect range when crop_scale_min is set
