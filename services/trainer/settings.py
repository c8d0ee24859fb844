"""The trainer service's settings: the shared service settings plus its CLASSFORGE_TRAINER_* knobs."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import ServiceSettings, Settings, SettingsError, env

WORKER_LAUNCHES = ("local", "external")


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
    max_workers: int = env("CLASSFORGE_TRAINER_MAX_WORKERS", 4,
                           "most worker processes one job may train on (TrainingConfig.workers); the jobs "
                           "service refuses more at submit")
    worker_restarts: int = env("CLASSFORGE_TRAINER_WORKER_RESTARTS", 1,
                               "a multi-worker job whose worker dies is restarted from the chief's last "
                               "checkpoint this many times before it fails")
    worker_launch: str = env("CLASSFORGE_TRAINER_WORKER_LAUNCH", "local",
                             "who starts a multi-worker job's processes: `local` (this replica, on loopback "
                             "ports) or `external` (a TFJob or indexed Job on Kubernetes; this replica waits "
                             "for the chief's export)")
    external_workers_timeout: float = env("CLASSFORGE_TRAINER_EXTERNAL_WORKERS_TIMEOUT", 86400.0,
                                          "with external workers: a job whose chief has not exported within "
                                          "this many seconds fails")

    def __post_init__(self) -> None:
        if (base := getattr(super(), "__post_init__", None)) is not None:
            base()
        # Renewed every third of it, over a store round trip: under a few seconds would expire live leases.
        if self.lease_seconds < 3:
            raise SettingsError(f"CLASSFORGE_TRAINER_LEASE_SECONDS={self.lease_seconds} is too short: at least 3 "
                                f"seconds (renewed every third of it)")
        if "/" in self.replica_id or len(self.replica_id) > 200:
            raise SettingsError("CLASSFORGE_TRAINER_REPLICA_ID must be at most 200 characters without '/'")
        if self.worker_launch not in WORKER_LAUNCHES:
            raise SettingsError(f"CLASSFORGE_TRAINER_WORKER_LAUNCH={self.worker_launch!r}: use one of "
                                f"{', '.join(WORKER_LAUNCHES)}")


@dataclass(frozen=True)
class WorkerSettings(Settings):
    """One worker process of a multi-worker job (services/trainer/mwms_worker.py). Its object store comes
    from the deployment's CLASSFORGE_S3_* settings, or CLASSFORGE_MWMS_STORE_DIR for a local directory."""

    job_id: str = env("CLASSFORGE_MWMS_JOB_ID", help="the job this worker trains (its state/trainer/<job>/ "
                                                     "training.pb holds the config and the records)")
    store_dir: str = env("CLASSFORGE_MWMS_STORE_DIR", "",
                         "a local directory as the object store (local runs, tests); empty: MinIO/S3")
    work_dir: str = env("CLASSFORGE_TRAINER_WORK_DIR", "/tmp/classforge-trainer",
                        "local scratch: shard cache, checkpoints and exports before upload")
    startup_timeout: float = env("CLASSFORGE_MWMS_STARTUP_TIMEOUT", 120.0,
                                 "a worker that cannot reach every peer of TF_CONFIG within this many seconds "
                                 "fails, naming the address")
    collective_timeout: float = env("CLASSFORGE_MWMS_COLLECTIVE_TIMEOUT", 300.0,
                                    "a collective operation (a gradient all-reduce) waiting this long for a "
                                    "peer fails the worker instead of hanging")
    log_level: str = env("CLASSFORGE_LOG_LEVEL", "INFO", "logging level")
