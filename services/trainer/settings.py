"""The trainer service's settings: the shared service settings plus its CLASSFORGE_TRAINER_* knobs."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import ServiceSettings, SettingsError, env


@dataclass(frozen=True)
class TrainerSettings(ServiceSettings):
    work_dir: str = env("CLASSFORGE_TRAINER_WORK_DIR", "/tmp/classforge-trainer",
                        "local scratch: shard cache, checkpoints and exports before upload")
    progress_seconds: float = env("CLASSFORGE_TRAINER_PROGRESS_SECONDS", 10.0,
                                  "at most one training_progress event this often within an epoch "
                                  "(plus one per epoch)")
    stop_timeout: float = env("CLASSFORGE_TRAINER_STOP_TIMEOUT", 120.0,
                              "on SIGTERM, how long the running job may take to reach a step and checkpoint")
    lease_seconds: float = env("CLASSFORGE_TRAINER_LEASE_SECONDS", 30.0,
                               "how long a replica's lease on a job lasts unrenewed (renewed every third of it): "
                               "a replica that dies leaves its jobs to the others after this long")
    replica_id: str = env("CLASSFORGE_TRAINER_REPLICA_ID", "",
                          "this replica's name in the job leases; empty: host name, process id and a random "
                          "suffix (a restarted replica must not reuse its predecessor's name)")

    def __post_init__(self) -> None:
        if (base := getattr(super(), "__post_init__", None)) is not None:
            base()
        # Renewed every third of it, over a store round trip: under a few seconds would expire live leases.
        if self.lease_seconds < 3:
            raise SettingsError(f"CLASSFORGE_TRAINER_LEASE_SECONDS={self.lease_seconds} is too short: at least 3 "
                                f"seconds (renewed every third of it)")
        if "/" in self.replica_id or len(self.replica_id) > 200:
            raise SettingsError("CLASSFORGE_TRAINER_REPLICA_ID must be at most 200 characters without '/'")
