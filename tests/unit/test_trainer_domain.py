"""Trainer service logic with the in-process bus and a local object store: events in, training in the
background, events out, idempotency, cancel with a final checkpoint, resume after a restart."""

import json
import time

import pytest

from classforge.v1 import common_pb2, events_pb2, trainer_service_pb2
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.events import InProcessEventBus, new_event, payload_kind
from services.common.storage import LocalObjectStore
from services.demo_data import load_digits
from services.trainer.backbones import Task
from services.trainer.data import ArrayData
from services.trainer.domain import KINDS, TrainerDomain

Status = trainer_service_pb2.TrainingStatus
OUT_KINDS = ["training_progress", "training_completed", "job_cancelled", "stage_failed"]


@pytest.fixture(scope="module")
def digits_data():
    images, labels, names = load_digits(24)
    return ArrayData({"train": (images[:640], labels[:640]), "val": (images[640:800], labels[640:800])},
                     (Task("label", names),))


def config(epochs=2, steps=3) -> common_pb2.TrainingConfig:
    return common_pb2.TrainingConfig(
        input_size=24, batch_size=32, backbone=common_pb2.BACKBONE_SMALL_CNN, width_multiplier=0.25,
        max_steps_per_epoch=steps, augmentation=common_pb2.Augmentation(brightness=0.1),
        full_stage=common_pb2.TrainingStage(epochs=epochs, learning_rate=0.05))


class World:
    def __init__(self, tmp_path, data, slow: float = 0.0):
        self.store = LocalObjectStore(tmp_path / "store")
        self.bus = InProcessEventBus()
        self.out: list[events_pb2.Event] = []
        self.opened = 0
        self.data = data
        self.slow = slow
        self.tmp_path = tmp_path
        self.bus.subscribe("test-observer", self.out.append, kinds=OUT_KINDS)

    def open_data(self, uri, cfg, cache):
        self.opened += 1
        if self.slow:  # slows every training step down so a test can act mid-run
            original = self.data.train_dataset

            def slowed(*args, **kwargs):
                return original(*args, **kwargs).map(lambda x, y: (_sleep(x, self.slow), y))
            data = ArrayData.__new__(ArrayData)
            data.__dict__.update(self.data.__dict__)
            data.train_dataset = slowed
            return data
        return self.data

    def domain(self, **kwargs) -> TrainerDomain:
        domain = TrainerDomain(self.bus, self.store, work_root=self.tmp_path / "work", progress_seconds=0.0,
                               open_data=self.open_data, **kwargs)
        return domain

    def kinds(self, job_id: str) -> list[str]:
        return [payload_kind(e) for e in list(self.out) if e.job_id == job_id and payload_kind(e) != "stage_heartbeat"]

    def wait_for(self, predicate, timeout=120.0):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "condition never met"
            time.sleep(0.05)


def _sleep(x, seconds):
    import tensorflow as tf

    return tf.numpy_function(lambda a: (time.sleep(seconds), a)[1], [x], tf.float32, stateful=True)


def submit(bus, job_id, cfg):
    spec = common_pb2.JobSpec(source=common_pb2.DataSource(dataset_id="d"), training=cfg)
    bus.publish(new_event(job_id, "jobs", job_submitted=events_pb2.JobSubmitted(spec=spec)))
    bus.publish(new_event(job_id, "tfrecords", records_built=events_pb2.RecordsBuilt(
        dataset_id="d", records_uri=f"records/{job_id}/")))


def test_records_built_trains_publishes_and_is_not_retrained(tmp_path, digits_data):
    world = World(tmp_path, digits_data)
    domain = world.domain()
    world.bus.subscribe("trainer", domain.handle, kinds=KINDS)
    submit(world.bus, "job-1", config())
    done = domain.wait("job-1", {Status.TRAINING_STATUS_SUCCEEDED, Status.TRAINING_STATUS_FAILED})
    assert done.status == Status.TRAINING_STATUS_SUCCEEDED, done.error
    world.wait_for(lambda: "training_completed" in world.kinds("job-1"))
    world.bus.drain()
    kinds = world.kinds("job-1")
    assert kinds.count("training_progress") >= 2 and kinds[-1] == "training_completed"
    completed = [e for e in world.out if payload_kind(e) == "training_completed"][0].training_completed
    assert completed.model.job_id == "job-1" and completed.model.uri.endswith("models/job-1/saved_model/")
    assert completed.records_uri == "records/job-1/" and completed.history_uri.endswith("history.json")
    assert world.store.exists("models/job-1/saved_model/saved_model.pb")
    assert done.config.input_size == 24 and done.config.weight_decay > 0  # the effective config
    epoch_ends = [e.training_progress for e in world.out if payload_kind(e) == "training_progress"
                  and "val_accuracy" in e.training_progress.metrics]
    assert [p.epoch for p in epoch_ends] == [1, 2]

    # At-least-once: another records_built for the same job changes nothing.
    world.bus.publish(new_event("job-1", "tfrecords", records_built=events_pb2.RecordsBuilt(
        records_uri="records/job-1/")))
    world.bus.drain()
    time.sleep(0.3)
    assert world.opened == 1 and world.kinds("job-1").count("training_completed") == 1
    assert domain.get("job-1").model.uri == completed.model.uri
    domain.close()
    world.bus.close()


def test_cancel_stops_at_a_step_with_a_final_checkpoint(tmp_path, digits_data):
    world = World(tmp_path, digits_data, slow=0.05)
    domain = world.domain()
    world.bus.subscribe("trainer", domain.handle, kinds=KINDS)
    submit(world.bus, "job-2", config(epochs=50, steps=20))
    world.wait_for(lambda: "training_progress" in world.kinds("job-2"))
    world.bus.publish(new_event("job-2", "jobs", cancel_requested=events_pb2.CancelRequested(reason="test")))
    stopped = domain.wait("job-2", {Status.TRAINING_STATUS_STOPPED, Status.TRAINING_STATUS_SUCCEEDED})
    assert stopped.status == Status.TRAINING_STATUS_STOPPED
    world.wait_for(lambda: "job_cancelled" in world.kinds("job-2"))  # published right after the status is saved
    world.bus.drain()
    cancelled = [e.job_cancelled for e in world.out if payload_kind(e) == "job_cancelled"]
    assert len(cancelled) == 1 and cancelled[0].stage == common_pb2.JOB_STAGE_TRAINING
    assert "/models/job-2/checkpoints/" in cancelled[0].checkpoint_uri
    key = world.store.key_from_uri(cancelled[0].checkpoint_uri.rstrip("/")) + "/state.json"
    assert world.store.exists(key)
    assert "training_completed" not in world.kinds("job-2")
    with pytest.raises(FailedPrecondition):
        domain.stop("job-2")
    domain.close()
    world.bus.close()


def test_a_restarted_trainer_resumes_a_running_job_from_its_checkpoint(tmp_path, digits_data):
    world = World(tmp_path, digits_data, slow=0.05)
    first = world.domain()
    first.start("job-3", "records/job-3/", config(epochs=3, steps=6))
    world.wait_for(lambda: first.get("job-3").last_checkpoint_uri != "")
    first.close()  # like SIGTERM: stops at a step boundary, keeps the job RUNNING
    paused = first.get("job-3")
    assert paused.status == Status.TRAINING_STATUS_RUNNING and paused.last_checkpoint_uri

    world.slow = 0.0
    second = world.domain()
    assert second.resume() == 1
    done = second.wait("job-3", {Status.TRAINING_STATUS_SUCCEEDED, Status.TRAINING_STATUS_FAILED})
    assert done.status == Status.TRAINING_STATUS_SUCCEEDED, done.error
    manifest = json.loads(world.store.get_bytes("models/job-3/manifest.json"))
    assert manifest["resumed_from"] is not None and manifest["epochs"] == 3
    history = json.loads(world.store.get_bytes("models/job-3/history.json"))
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[-1]["step"] == 18
    second.close()
    world.bus.close()


def test_errors_and_bad_configs(tmp_path, digits_data):
    world = World(tmp_path, digits_data)
    domain = world.domain()
    with pytest.raises(NotFound):
        domain.get("nope")
    with pytest.raises(InvalidArgument) as error:
        domain.start("job-4", "records/x/", common_pb2.TrainingConfig(input_size=4))
    assert error.value.field == "config.input_size"
    with pytest.raises(InvalidArgument) as error:
        domain.start("job-4", "", None)
    assert error.value.field == "records_uri"
    with pytest.raises(InvalidArgument):
        domain.get("a/b")
    # The same bad config arriving by event fails the job with a reason instead of raising.
    world.bus.subscribe("trainer", domain.handle, kinds=KINDS)
    submit(world.bus, "job-5", common_pb2.TrainingConfig(batch_size=-3))
    world.bus.drain()
    assert domain.get("job-5").status == Status.TRAINING_STATUS_FAILED
    failed = [e.stage_failed for e in world.out if payload_kind(e) == "stage_failed"]
    assert failed and "config.batch_size" in failed[0].message
    # Cancel before the records exist: a later records_built does not train.
    world.bus.publish(new_event("job-6", "jobs", cancel_requested=events_pb2.CancelRequested(reason="x")))
    submit(world.bus, "job-6", config())
    world.bus.drain()
    assert domain.get("job-6").status == Status.TRAINING_STATUS_STOPPED and world.opened == 0
    domain.close()
    world.bus.close()


def test_a_cancel_that_arrives_with_the_last_step_still_ends_cancelled_not_completed(tmp_path, digits_data):
    world = World(tmp_path, digits_data, slow=0.2)
    domain = world.domain()
    world.bus.subscribe("trainer", domain.handle, kinds=KINDS)
    submit(world.bus, "job-7", config(epochs=1, steps=1))  # one step: the stop lands after the last step
    world.wait_for(lambda: "training_progress" in world.kinds("job-7"))
    world.bus.publish(new_event("job-7", "jobs", cancel_requested=events_pb2.CancelRequested(reason="test")))
    ended = domain.wait("job-7", {Status.TRAINING_STATUS_STOPPED, Status.TRAINING_STATUS_SUCCEEDED})
    world.wait_for(lambda: "job_cancelled" in world.kinds("job-7"))
    assert ended.status == Status.TRAINING_STATUS_STOPPED
    assert "training_completed" not in world.kinds("job-7")
    domain.close()
    world.bus.close()


def test_a_store_outage_longer_than_the_window_fails_the_job_even_when_state_cannot_be_saved(tmp_path, digits_data):
    from services.common.errors import Unavailable

    world = World(tmp_path, digits_data)

    def store_down(uri, cfg, cache):
        world.opened += 1
        world.store.put_bytes = _raise_unavailable  # the failure state cannot be saved either
        raise Unavailable("object store at 127.0.0.1:1 cannot be reached")

    world.open_data = store_down
    domain = world.domain(outage_window_s=0.5, retry_seconds=0.1)
    domain.start("job-8", "records/job-8/", config())
    world.wait_for(lambda: "stage_failed" in world.kinds("job-8"), timeout=30)
    (failed,) = [e.stage_failed for e in world.out if payload_kind(e) == "stage_failed"]
    assert failed.stage == common_pb2.JOB_STAGE_TRAINING
    assert "unavailable for" in failed.message and "outage window" in failed.message
    assert world.opened >= 2  # retried within the window before giving up
    assert domain.get("job-8").status == Status.TRAINING_STATUS_FAILED  # answered from memory
    domain.check_worker()  # the worker survived the failure
    domain.close()
    world.bus.close()


def _raise_unavailable(*args, **kwargs):
    from services.common.errors import Unavailable

    raise Unavailable("object store at 127.0.0.1:1 cannot be reached")


def test_a_job_without_training_config_gets_the_auto_plan_saved_and_announced(tmp_path, digits_data, monkeypatch):
    """No training config: the recipe is chosen when training starts (from the data's 24 px images and the
    injected 2-core AVX2 hardware), the budget sizes it, and the plan is saved with the job, on the first
    progress event and in the model's manifest."""
    from services.trainer.loop import Trainer
    from services.trainer.recipe import Hardware

    monkeypatch.setattr(Trainer, "_measure_throughput", lambda self, network, losses: (10.0, 500.0))
    world = World(tmp_path, digits_data)
    domain = world.domain(hardware=Hardware(cpu_cores=2, isa="avx2"))
    world.bus.subscribe("trainer", domain.handle, kinds=KINDS)
    submit(world.bus, "job-auto", common_pb2.TrainingConfig(time_budget="1m"))
    done = domain.wait("job-auto", {Status.TRAINING_STATUS_SUCCEEDED, Status.TRAINING_STATUS_FAILED})
    assert done.status == Status.TRAINING_STATUS_SUCCEEDED, done.error
    plan, c = done.plan, done.config
    assert plan.recipe == "auto" and plan.time_budget_seconds == 60 and plan.measured_images_per_second == 10
    assert (c.input_size, c.backbone, c.width_multiplier) == (28, common_pb2.BACKBONE_SMALL_CNN, 0.5)
    assert not c.augmentation.horizontal_flip and c.augmentation.crop_scale_min == 0
    assert c.augmentation.box_jitter == 0 and "short run (1 epochs): no box jitter" in plan.text  # 1 epoch: relaxed
    assert plan.planned_epochs == c.full_stage.epochs == 1 and 0 < c.max_steps_per_epoch < 10  # 10 images/s
    assert plan.planned_training_seconds + plan.evaluation_margin_seconds <= 60
    assert plan.actual_training_seconds > 0
    assert "training plan (recipe auto):" in plan.text and "time budget 1m 00s" in plan.text
    world.wait_for(lambda: "training_completed" in world.kinds("job-auto"))
    announced = [e.training_progress.plan for e in world.out if payload_kind(e) == "training_progress"
                 and e.training_progress.plan]
    assert announced == [plan.text]
    manifest = json.loads(world.store.get_bytes("models/job-auto/manifest.json"))
    assert manifest["plan"]["recipe"] == "auto" and manifest["plan"]["planned_epochs"] == 1
    domain.close()
    world.bus.close()
