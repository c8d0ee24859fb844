"""One job on several worker processes (MultiWorkerMirroredStrategy over gRPC on 127.0.0.1, CPU):
TF_CONFIG rules, the limit at submit, chief-only checkpoints, a peer that cannot be reached, accuracy
against one worker, and a worker killed mid-run (resumed and completed, or a clear FAILED)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from classforge.v1 import common_pb2, events_pb2, trainer_service_pb2
from services.common.errors import InvalidArgument, NotFound
from services.common.events import InProcessEventBus, new_event
from services.common.settings import SettingsError
from services.common.storage import LocalObjectStore
from services.demo_data import load_digits
from services.jobs.spec_validation import validate_job_spec
from services.trainer.backbones import Task
from services.trainer.config import with_defaults
from services.trainer.data import ArrayData, open_records
from services.trainer.domain import KINDS, TrainerDomain
from services.trainer.loop import Trainer
from services.trainer.multiworker import (
    STORE_DIR_ENV,
    WorkerGroup,
    indexed_job_tf_config,
    is_chief,
    loopback_addresses,
    peers_of,
    resolve_tf_config,
    tf_config,
)

builder = pytest.importorskip("services.tfrecords.builder")
sample = pytest.importorskip("tests.support.sample_dataset")

Status = trainer_service_pb2.TrainingStatus
ENDED = {Status.TRAINING_STATUS_SUCCEEDED, Status.TRAINING_STATUS_FAILED}


# --------------------------------------------------------------------------- TF_CONFIG


def test_local_tf_config_makes_worker_zero_the_chief():
    addresses = ["127.0.0.1:5001", "127.0.0.1:5002"]
    first, second = tf_config(addresses, 0), tf_config(addresses, 1)
    assert first == {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": 0}}
    assert is_chief(first) and not is_chief(second)
    assert peers_of(second) == ["127.0.0.1:5001"]
    with pytest.raises(SettingsError, match="index 2"):
        tf_config(addresses, 2)


def test_indexed_job_tf_config_names_the_pods_behind_the_headless_service():
    environ = {"JOB_COMPLETION_INDEX": "1", "CLASSFORGE_MWMS_WORKERS": "3", "CLASSFORGE_MWMS_JOB_NAME": "train-x",
               "CLASSFORGE_MWMS_SERVICE": "trainer-workers", "CLASSFORGE_MWMS_NAMESPACE": "classforge"}
    config = resolve_tf_config(environ)
    assert config == indexed_job_tf_config(1, 3, "train-x", "trainer-workers", "classforge")
    assert config["cluster"]["worker"] == [f"train-x-{i}.trainer-workers.classforge.svc:2222" for i in range(3)]
    assert config["task"] == {"type": "worker", "index": 1} and not is_chief(config)
    missing = {k: v for k, v in environ.items() if k != "CLASSFORGE_MWMS_SERVICE"}
    with pytest.raises(SettingsError, match="CLASSFORGE_MWMS_SERVICE"):
        resolve_tf_config(missing)


def test_tf_config_from_the_environment_is_checked():
    tfjob = {"cluster": {"chief": ["j-chief-0.ns.svc:2222"], "worker": ["j-worker-0.ns.svc:2222"]},
             "task": {"type": "worker", "index": 0}}
    config = resolve_tf_config({"TF_CONFIG": json.dumps(tfjob)})
    assert not is_chief(config)  # a TFJob with a Chief replica: the chief is that one, not worker 0
    assert is_chief(config | {"task": {"type": "chief", "index": 0}})
    with pytest.raises(SettingsError, match="TF_CONFIG is not a TensorFlow cluster config"):
        resolve_tf_config({"TF_CONFIG": "{not json"})
    with pytest.raises(SettingsError, match="worker/3 is not in the cluster"):
        resolve_tf_config({"TF_CONFIG": json.dumps(tfjob | {"task": {"type": "worker", "index": 3}})})
    with pytest.raises(SettingsError, match="JOB_COMPLETION_INDEX"):
        resolve_tf_config({})


# --------------------------------------------------------------------------- submit


def spec_with(**training) -> common_pb2.JobSpec:
    return common_pb2.JobSpec(source=common_pb2.DataSource(dataset_id="d"),
                              training=common_pb2.TrainingConfig(**training))


def test_more_workers_than_the_deployment_runs_is_invalid_at_submit():
    validate_job_spec(spec_with(workers=4), max_workers=4)
    with pytest.raises(InvalidArgument) as exc:
        validate_job_spec(spec_with(workers=5), max_workers=4)
    assert exc.value.field == "spec.training.workers" and "CLASSFORGE_TRAINER_MAX_WORKERS" in exc.value.message
    with pytest.raises(InvalidArgument, match="time budget"):
        validate_job_spec(spec_with(workers=2, time_budget="10m"), max_workers=4)
    with pytest.raises(InvalidArgument, match="negative"):
        validate_job_spec(spec_with(workers=-1), max_workers=4)


# --------------------------------------------------------------------------- chief-only writes


def test_a_non_chief_worker_uploads_no_checkpoint(tmp_path):
    images, labels, names = load_digits(16)
    data = ArrayData({"train": (images[:256], labels[:256])}, (Task("label", names),))
    config = with_defaults(common_pb2.TrainingConfig(
        input_size=16, batch_size=64, backbone=common_pb2.BACKBONE_SMALL_CNN, width_multiplier=0.25,
        augmentation=common_pb2.Augmentation(brightness=0.05), max_steps_per_epoch=2,
        full_stage=common_pb2.TrainingStage(epochs=1, learning_rate=1e-3)))
    for chief in (False, True):
        store = LocalObjectStore(tmp_path / f"store-{chief}")
        result = Trainer(config, data, store, "models/j/", tmp_path / f"work-{chief}", chief=chief).run()
        keys = [info.key for info in store.list("models/j/checkpoints/")]
        if chief:
            assert result.checkpoint_uri and "models/j/checkpoints/latest.json" in keys
        else:
            assert keys == [] and result.checkpoint_uri == ""
            assert (tmp_path / "work-False" / "checkpoint" / "model.weights.h5").exists()  # saved, discarded


def test_a_worker_that_cannot_reach_its_peer_fails_naming_the_address(tmp_path):
    own, absent = loopback_addresses(2)  # nobody listens on `absent`
    env = dict(os.environ) | {"TF_CONFIG": json.dumps(tf_config([own, absent], 0)),
                              "CLASSFORGE_MWMS_JOB_ID": "j", STORE_DIR_ENV: str(tmp_path / "store"),
                              "CLASSFORGE_MWMS_STARTUP_TIMEOUT": "3", "CLASSFORGE_TRAINER_WORK_DIR": str(tmp_path)}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "services.trainer.mwms_worker"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stdout[-2000:] + done.stderr[-2000:]  # by its watcher
    assert time.monotonic() - started < 60
    errors = [json.loads(line)["worker_error"] for line in done.stdout.splitlines() if "worker_error" in line]
    assert errors and absent in errors[-1] and "within 3s" in errors[-1]


# --------------------------------------------------------------------------- training on two workers


def build_records(store, train: int, val: int) -> str:
    items = sample.digits_items(train + val, size=16, tasks=1)
    sample.write_dataset(store, "digits", {"train": items[:train], "val": items[train:], "test": []},
                         sample.DIGIT_TASKS[:1])
    return builder.RecordsBuilder(workers=1).build(store, "digits", builder.BuildOptions(min_shards=4)).prefix


def digits_config(workers: int, epochs: int, **fields) -> common_pb2.TrainingConfig:
    return with_defaults(common_pb2.TrainingConfig(
        input_size=16, batch_size=64, backbone=common_pb2.BACKBONE_SMALL_CNN, width_multiplier=0.5, seed=1,
        augmentation=common_pb2.Augmentation(brightness=0.05), optimizer=common_pb2.OPTIMIZER_ADAM,
        full_stage=common_pb2.TrainingStage(epochs=epochs, learning_rate=3e-3), workers=workers, **fields))


def checkpoint_names(store, job_id: str) -> list[str]:
    prefix = f"models/{job_id}/checkpoints/"
    return sorted({info.key[len(prefix):].split("/", 1)[0] for info in store.list(prefix)})


def test_two_workers_train_like_one(tmp_path):
    """The same job (same records, seed and global batch) on one in-process worker and on two worker
    processes: the validation accuracy agrees within 2 points; the chief's checkpoints alone are in the
    store. Images/s of both are printed (on 2 shared cores this shows the overhead, not a speed-up)."""
    store = LocalObjectStore(tmp_path / "store")
    prefix = build_records(store, train=1500, val=500)
    epochs = 8
    one_config = digits_config(1, epochs)
    data = open_records(store, store.uri(prefix), one_config, tmp_path / "cache")
    started = time.monotonic()
    one = Trainer(one_config, data, store, "models/one/", tmp_path / "one").run()
    one_seconds = time.monotonic() - started

    training = trainer_service_pb2.Training(job_id="two", records_uri=store.uri(prefix),
                                            config=digits_config(2, epochs))
    store.put_bytes("state/trainer/two/training.pb", training.SerializeToString())
    started = time.monotonic()
    group = WorkerGroup("two", 2, env={STORE_DIR_ENV: str(store.local_path()),
                                       "CLASSFORGE_TRAINER_WORK_DIR": str(tmp_path / "workers")},
                        log_dir=tmp_path / "logs")
    outcome = group.wait(threading.Event())
    two_seconds = time.monotonic() - started
    assert outcome.status == "succeeded", outcome.message

    two_history = json.loads(store.get_bytes("models/two/history.json"))
    manifest = json.loads(store.get_bytes("models/two/manifest.json"))
    assert manifest["workers"] == 2 and len(two_history) == epochs
    one_accuracy, two_accuracy = one.history[-1]["val_accuracy"], two_history[-1]["val_accuracy"]
    assert one_accuracy > 0.9, one.history[-1]  # a job that learned, so that the comparison means something
    assert abs(one_accuracy - two_accuracy) <= 0.02, (one_accuracy, two_accuracy)
    # One writer: the newest two epochs, named once, and latest.json names the last.
    assert checkpoint_names(store, "two") == ["latest.json", f"s2-e{epochs - 1:04d}", f"s2-e{epochs:04d}"]
    latest = json.loads(store.get_bytes("models/two/checkpoints/latest.json"))
    assert latest["key"] == f"models/two/checkpoints/s2-e{epochs:04d}/"

    def rate(history):  # after the first epoch (tracing and start-up)
        return float(np.mean([h["images_per_second"] for h in history[1:]]))
    print(f"\nimages/s 1 worker {rate(one.history):.0f} (run {one_seconds:.0f}s), 2 workers "
          f"{rate(two_history):.0f} (run {two_seconds:.0f}s, start-up included); val accuracy "
          f"{one_accuracy:.3f} / {two_accuracy:.3f}")


class World:
    """The trainer's domain with the in-process bus and a local store; records built for real."""

    def __init__(self, tmp_path, **domain_kwargs):
        self.store = LocalObjectStore(tmp_path / "store")
        self.records = build_records(self.store, train=640, val=160)
        self.bus = InProcessEventBus()
        self.domain = TrainerDomain(self.bus, self.store, work_root=tmp_path / "work", progress_seconds=0.0,
                                    **domain_kwargs)
        self.bus.subscribe("trainer", self.domain.handle, kinds=KINDS)

    def submit(self, job_id: str, config: common_pb2.TrainingConfig) -> None:
        spec = common_pb2.JobSpec(source=common_pb2.DataSource(dataset_id="digits"), training=config)
        self.bus.publish(new_event(job_id, "jobs", job_submitted=events_pb2.JobSubmitted(spec=spec)))
        self.bus.publish(new_event(job_id, "tfrecords", records_built=events_pb2.RecordsBuilt(
            dataset_id="digits", records_uri=self.store.uri(self.records))))

    def kill_a_worker_after_the_first_checkpoint(self, job_id: str, timeout: float = 180.0) -> None:
        """kill -9 of worker 1 once the chief has written a checkpoint (mid-run: more epochs follow)."""
        group = self.wait_for_the_first_checkpoint(job_id, timeout)
        os.kill(group.processes[1].pid, signal.SIGKILL)

    def wait_for_the_first_checkpoint(self, job_id: str, timeout: float) -> WorkerGroup:
        deadline = time.monotonic() + timeout
        while not self.store.exists(f"models/{job_id}/checkpoints/latest.json"):
            assert time.monotonic() < deadline, "the chief wrote no checkpoint"
            try:
                training = self.domain.get(job_id)
            except NotFound:  # the events are still on their way
                training = None
            assert training is None or training.status not in ENDED, training.error
            time.sleep(0.1)
        group = self.domain.runner.active_group
        assert group is not None
        return group


def unstructured(config: common_pb2.TrainingConfig) -> common_pb2.TrainingConfig:
    # A spec's config: the trainer fills the defaults itself.
    return common_pb2.TrainingConfig(**{f.name: v for f, v in config.ListFields()})


def test_a_killed_worker_is_restarted_from_the_chiefs_checkpoint_and_the_job_completes(tmp_path):
    world = World(tmp_path, worker_restarts=1)
    world.submit("job-1", unstructured(digits_config(2, 4, max_steps_per_epoch=6)))
    world.kill_a_worker_after_the_first_checkpoint("job-1")
    started = time.monotonic()
    done = world.domain.wait("job-1", ENDED, timeout=300)
    assert done.status == Status.TRAINING_STATUS_SUCCEEDED, done.error
    assert time.monotonic() - started < 300
    manifest = json.loads(world.store.get_bytes("models/job-1/manifest.json"))
    assert manifest["resumed_from"] is not None and manifest["resumed_from"]["epoch"] >= 1
    history = json.loads(world.store.get_bytes("models/job-1/history.json"))
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]  # every epoch once: no duplicate, no gap
    assert checkpoint_names(world.store, "job-1") == ["latest.json", "s2-e0003", "s2-e0004"]


def test_a_killed_worker_without_restarts_fails_the_job_naming_it(tmp_path):
    world = World(tmp_path, worker_restarts=0)
    world.submit("job-2", unstructured(digits_config(2, 4, max_steps_per_epoch=6)))
    world.kill_a_worker_after_the_first_checkpoint("job-2")
    done = world.domain.wait("job-2", ENDED, timeout=60)  # the watchdog ends the group at once
    assert done.status == Status.TRAINING_STATUS_FAILED
    assert "worker 1 (127.0.0.1:" in done.error and "SIGKILL" in done.error, done.error


def test_a_cancel_ends_every_worker_and_keeps_the_chiefs_checkpoint(tmp_path):
    world = World(tmp_path)
    world.submit("job-5", unstructured(digits_config(2, 20, max_steps_per_epoch=6)))
    group = world.wait_for_the_first_checkpoint("job-5", timeout=180)
    world.bus.publish(new_event("job-5", "jobs", cancel_requested=events_pb2.CancelRequested(reason="test")))
    done = world.domain.wait("job-5", ENDED | {Status.TRAINING_STATUS_STOPPED}, timeout=60)
    assert done.status == Status.TRAINING_STATUS_STOPPED, done.error
    assert all(p.poll() is not None for p in group.processes)  # no worker left behind
    assert "models/job-5/checkpoints/" in done.last_checkpoint_uri
    assert not world.store.exists("models/job-5/manifest.json")


def test_with_external_workers_the_replica_waits_for_the_chiefs_export(tmp_path):
    """CLASSFORGE_TRAINER_WORKER_LAUNCH=external (a TFJob or indexed Job runs the workers): the job
    completes when the chief's manifest appears, and fails naming the job id when none appears in time."""
    world = World(tmp_path, worker_launch="external", external_workers_timeout=600.0, retry_seconds=0.1)
    world.submit("job-3", unstructured(digits_config(2, 1)))
    world.domain.wait("job-3", {Status.TRAINING_STATUS_RUNNING}, timeout=60)
    assert world.domain.runner.active_group is None  # nothing started locally
    world.store.put_bytes("models/job-3/manifest.json", b"{}")  # what the external chief writes last
    done = world.domain.wait("job-3", ENDED, timeout=60)
    assert done.status == Status.TRAINING_STATUS_SUCCEEDED, done.error

    late = World(tmp_path / "late", worker_launch="external", external_workers_timeout=0.5, retry_seconds=0.1)
    late.submit("job-4", unstructured(digits_config(2, 1)))
    done = late.domain.wait("job-4", ENDED, timeout=60)
    assert done.status == Status.TRAINING_STATUS_FAILED
    assert "CLASSFORGE_MWMS_JOB_ID=job-4" in done.error, done.error


def test_worker_misconfiguration_is_one_line_naming_the_variable(capsys):
    from services.trainer import mwms_worker
    from services.trainer.settings import TrainerSettings

    assert mwms_worker.main({"TF_CONFIG": json.dumps(tf_config(["127.0.0.1:1"], 0))}) == mwms_worker.EXIT_SETTINGS
    assert "CLASSFORGE_MWMS_JOB_ID" in json.loads(capsys.readouterr().out.strip())["worker_error"]
    assert mwms_worker.main({"CLASSFORGE_MWMS_JOB_ID": "j"}) == mwms_worker.EXIT_SETTINGS
    assert "JOB_COMPLETION_INDEX" in json.loads(capsys.readouterr().out.strip())["worker_error"]
    required = {"CLASSFORGE_KAFKA_BOOTSTRAP": "k:9092", "CLASSFORGE_S3_ENDPOINT": "s:9000",
                "CLASSFORGE_S3_ACCESS_KEY": "a", "CLASSFORGE_S3_SECRET_KEY": "b"}
    with pytest.raises(SettingsError, match="CLASSFORGE_TRAINER_WORKER_LAUNCH"):
        TrainerSettings.load(required | {"CLASSFORGE_TRAINER_WORKER_LAUNCH": "kubernetes"})
