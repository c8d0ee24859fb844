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
# TrainingConfig.workers above this is refused at submit (CLASSFORGE_TRAINER_MAX_WORKERS sets the
# deployment's own limit): a job that asks for more workers than the cluster can run would wait forever.
DEFAULT_MAX_WORKERS = 4


def check_workers(config: common_pb2.TrainingConfig, max_workers: int) -> str | None:
    """Why `config.workers` cannot run (None when it can): the message of an InvalidArgument on
    `<training>.workers`."""
    if config.workers < 0:
        return f"must not be negative, got {config.workers}"
    if config.workers > max_workers:
        return (f"{config.workers} workers asked for, but this deployment runs at most {max_workers} "
                f"(CLASSFORGE_TRAINER_MAX_WORKERS)")
    if config.workers > 1 and config.time_budget:
        return ("a time budget is not supported with more than one worker (each worker would measure its own "
                "throughput and plan different epochs); set epochs instead, or workers: 1")
    return None
