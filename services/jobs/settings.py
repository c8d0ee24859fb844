"""The jobs service's settings: the shared service settings plus its CLASSFORGE_JOBS_* deadlines."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import ServiceSettings, env


@dataclass(frozen=True)
class JobsSettings(ServiceSettings):
    stage_deadline_seconds: float = env(
        "CLASSFORGE_JOBS_STAGE_DEADLINE_SECONDS", 600.0,
        "a job fails when its active stage sends no event or heartbeat for this long")
    cancel_grace_seconds: float = env(
        "CLASSFORGE_JOBS_CANCEL_GRACE_SECONDS", 120.0,
        "a cancelled job ends CANCELLED after this long even when its stage never confirms")
    trainer_max_workers: int = env(
        "CLASSFORGE_TRAINER_MAX_WORKERS", 4,
        "most worker processes one job may ask for (TrainingConfig.workers); more is INVALID_ARGUMENT at submit")
    watchdog_seconds: float = env("CLASSFORGE_JOBS_WATCHDOG_SECONDS", 5.0, "how often deadlines are checked")
