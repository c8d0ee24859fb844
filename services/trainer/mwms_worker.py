"""One worker process of a multi-worker job (`python -m services.trainer.mwms_worker`): the entry point
that the trainer replica starts N times on loopback ports, and that a Kubeflow TFJob or an indexed Job
runs on Kubernetes (services/trainer/multiworker.py explains the design).

It reads TF_CONFIG (or computes it from JOB_COMPLETION_INDEX), the job's state
(state/trainer/<job>/training.pb: the effective config and the records, written by the replica that
planned the job), builds MultiWorkerMirroredStrategy with a collective timeout, waits for its peers
within a start-up timeout, then runs the ordinary training loop (services/trainer/loop.py) under that
strategy: the chief writes checkpoints and exports the model; the others do the same into a directory
that is discarded. Every worker resumes from the chief's latest checkpoint.

Exit status 0: trained and exported; 2: misconfigured (one line naming the variable); 1: training
failed; killed (SIGKILL) by its watcher: a peer was unreachable. The last log line of a failure is JSON
with `worker_error`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
from pathlib import Path

from classforge.v1 import trainer_service_pb2
from services.common.settings import SettingsError
from services.trainer.multiworker import is_chief, peers_of, resolve_tf_config, wait_reachable
from services.trainer.settings import WorkerSettings

log = logging.getLogger("classforge.trainer")

EXIT_FAILED, EXIT_SETTINGS, EXIT_UNREACHABLE = 1, 2, 3
STATE_KEY = "state/trainer/{job_id}/training.pb"  # services/trainer/training_store.py


def report_failure(message: str) -> None:
    """One JSON line the launcher (multiworker.WorkerGroup) quotes in the job's error."""
    print(json.dumps({"worker_error": message}), flush=True)


def make_strategy(startup_timeout: float, collective_timeout: float):
    """MultiWorkerMirroredStrategy from TF_CONFIG. Its constructor waits for the whole cluster: bounded by
    `startup_timeout` (TensorFlow waits forever by default). Every collective fails after
    `collective_timeout` instead of hanging on a dead peer, and the peer health check runs every 5 s.
    The cluster wait gets a margin over `startup_timeout`, so that `watch_peers` reports first, naming
    the address."""
    import tensorflow as tf
    from tensorflow.python.distribute import collective_all_reduce_strategy as collective

    extended = collective.CollectiveAllReduceExtended
    extended._check_health_initial_timeout = max(int(startup_timeout), 1) + 30
    extended._check_health_interval = 5
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING,
        timeout_seconds=collective_timeout)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def watch_peers(config: dict, timeout: float) -> None:
    """Beside the strategy's wait for its cluster (which names no address): a peer not reachable within
    `timeout` ends this process with a message naming it. A forked process watches, not a thread: the
    strategy's constructor waits inside TensorFlow holding the GIL, so no thread of ours would run.
    Called before TensorFlow is imported (forking after it is unsafe)."""
    parent = os.getpid()
    if os.fork():
        return
    try:  # the watcher: exits quietly once every peer answered
        wait_reachable(peers_of(config), timeout)
        os._exit(0)
    except Exception as exc:  # noqa: BLE001 - its only job is to report it and end the worker
        report_failure(getattr(exc, "message", str(exc)))
        if os.getppid() == parent:  # still ours (not a reused pid)
            os.kill(parent, signal.SIGKILL)
        os._exit(EXIT_UNREACHABLE)


def open_store(settings: WorkerSettings):
    from services.common.storage import LocalObjectStore

    if settings.store_dir:
        return LocalObjectStore(settings.store_dir)
    from services.common.storage.minio import MinioObjectStore
    from services.trainer.settings import TrainerSettings

    return MinioObjectStore.from_settings(TrainerSettings.load())


def train(settings: WorkerSettings, config: dict) -> None:
    from services.common.artefacts import model_prefix
    from services.common.storage import LocalObjectStore
    from services.trainer.data import open_records
    from services.trainer.job_run import export_run
    from services.trainer.loop import Trainer

    chief = is_chief(config)
    task = f"{config['task']['type']}-{config['task']['index']}"
    strategy = make_strategy(settings.startup_timeout, settings.collective_timeout)
    store = open_store(settings)
    training = trainer_service_pb2.Training.FromString(store.get_bytes(STATE_KEY.format(job_id=settings.job_id)))
    workdir = Path(settings.work_dir) / f"{settings.job_id}-{task}"
    log.info("multi-worker cluster ready", extra={"job_id": settings.job_id, "task": task, "chief": chief,
                                                  "replicas": strategy.num_replicas_in_sync})
    data = open_records(store, training.records_uri, training.config, workdir / "cache")
    trainer = Trainer(training.config, data, store, model_prefix(settings.job_id), workdir / "run",
                      strategy=strategy, chief=chief)
    result = trainer.run()
    # Every worker exports (saving may take part in collectives); only the chief's reaches the store.
    target = store if chief else LocalObjectStore(workdir / "discarded")
    export_run(target, settings.job_id, training, result, data, workdir)
    if not chief:
        shutil.rmtree(workdir, ignore_errors=True)
    log.info("worker finished", extra={"job_id": settings.job_id, "task": task})


def main(environ=None) -> int:
    environ = os.environ if environ is None else environ
    try:
        settings = WorkerSettings.load(environ)
        config = resolve_tf_config(environ)
    except SettingsError as exc:
        report_failure(str(exc))
        return EXIT_SETTINGS
    os.environ["TF_CONFIG"] = json.dumps(config)  # what the strategy reads
    from services.common.logs import configure_logging

    configure_logging("trainer-worker", settings.log_level)
    watch_peers(config, settings.startup_timeout)
    try:
        train(settings, config)
    except Exception as exc:  # noqa: BLE001 - the launcher reads the reason from the last line
        log.exception("worker failed", extra={"job_id": settings.job_id})
        report_failure(f"{type(exc).__name__}: {getattr(exc, 'message', str(exc).splitlines()[0] if str(exc) else '')}")
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
