"""The trainer service's settings: the shared service settings plus its CLASSFORGE_TRAINER_* knobs."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import ServiceSettings, env


@dataclass(frozen=True)
class TrainerSettings(ServiceSettings):
    work_dir: str = env("CLASSFORGE_TRAINER_WORK_DIR", "/tmp/classforge-trainer",
                        "local scratch: shard cache, checkpoints and exports before upload")
    progress_seconds: float = env("CLASSFORGE_TRAINER_PROGRESS_SECONDS", 10.0,
                                  "at most one training_progress event this often within an epoch "
                                  "(plus one per epoch)")
    stop_timeout: float = env("CLASSFORGE_TRAINER_STOP_TIMEOUT", 120.0,
                              "on SIGTERM, how long the running job may take to reach a step and checkpoint")
