"""The training loop on real data (scikit-learn digits): two-stage freezing, crash and resume, stop with
a final checkpoint, export parity, and a short run that learns."""

import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from classforge.v1 import common_pb2
from services.common.preprocessing import decode_for_serving
from services.common.storage import LocalObjectStore
from services.demo_data import load_digits
from services.trainer import export
from services.trainer.backbones import Task
from services.trainer.config import with_defaults
from services.trainer.data import ArrayData
from services.trainer.loop import Hooks, Trainer

SIZE = 32


@pytest.fixture(scope="module")
def digits():
    images, labels, names = load_digits(SIZE)
    order = np.random.default_rng(0).permutation(len(images))
    train, val = order[:1500], order[1500:]
    return ArrayData({"train": (images[train], labels[train]), "val": (images[val], labels[val])},
                     (Task("label", names),)), images[val], labels[val]


def small_config(**fields) -> common_pb2.TrainingConfig:
    base = dict(input_size=SIZE, batch_size=64, backbone=common_pb2.BACKBONE_SMALL_CNN, width_multiplier=0.5,
                optimizer=common_pb2.OPTIMIZER_ADAM,
                augmentation=common_pb2.Augmentation(crop_scale_min=0.7, brightness=0.1),
                full_stage=common_pb2.TrainingStage(epochs=4, learning_rate=3e-3))
    base.update(fields)
    return with_defaults(common_pb2.TrainingConfig(**base))


def trainer(config, data, tmp_path, **kwargs) -> Trainer:
    return Trainer(config, data, LocalObjectStore(tmp_path / "store"), "models/job/", tmp_path / "work", **kwargs)


def test_stage_one_freezes_the_backbone_and_stage_two_trains_it(digits, tmp_path):
    data = digits[0]
    config = small_config(head_stage=common_pb2.TrainingStage(epochs=1, learning_rate=1e-2),
                          full_stage=common_pb2.TrainingStage(skip=True), max_steps_per_epoch=5)
    run = trainer(config, data, tmp_path / "a")
    network, losses = run._build()
    before = {v.path: v.numpy().copy() for v in network.backbone.weights}  # moving BN statistics included
    head_before = network.model.get_layer("head_label").kernel.numpy().copy()
    run._build = lambda: (network, losses)
    result = run.run()
    assert result.history[0]["stage"] == 1
    for v in network.backbone.weights:
        np.testing.assert_array_equal(before[v.path], v.numpy(), err_msg=f"{v.path} changed in stage 1")
    assert not np.array_equal(head_before, network.model.get_layer("head_label").kernel.numpy())

    config2 = small_config(head_stage=common_pb2.TrainingStage(skip=True),
                           full_stage=common_pb2.TrainingStage(epochs=1, learning_rate=1e-2), max_steps_per_epoch=5)
    run2 = trainer(config2, data, tmp_path / "b")
    run2._build = lambda: (network, losses)
    run2.run()
    changed = [v.path for v in network.backbone.weights if not np.array_equal(before[v.path], v.numpy())]
    assert len(changed) == len(network.backbone.weights)  # kernels, BN scales and moving statistics


class CrashAfter(Hooks):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def checkpoint(self, uri, state):
        if state["epoch"] == self.epoch:
            raise RuntimeError("simulated crash")


def test_crash_resumes_from_the_checkpoint_epoch(digits, tmp_path):
    data = digits[0]
    config = small_config(max_steps_per_epoch=4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer(config, data, tmp_path, hooks=CrashAfter(2)).run()
    store = LocalObjectStore(tmp_path / "store")
    latest = json.loads(store.get_bytes("models/job/checkpoints/latest.json"))
    assert latest["key"].endswith("s2-e0002/")
    first_two = json.loads(store.get_bytes(latest["key"] + "state.json"))["history"]

    result = trainer(config, data, tmp_path).run()
    assert result.status == "succeeded"
    assert result.resumed_from == {"stage": 2, "epoch": 2, "step_in_epoch": 0}
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert result.history[:2] == first_two
    assert result.history[-1]["step"] == 4 * 4  # no epoch trained twice


class StopAfter(Hooks):
    def __init__(self, steps: int, event):
        self.steps, self.event = steps, event
        self.seen = []

    def progress(self, progress, epoch_end):
        self.seen.append(progress)
        if progress.step >= self.steps:
            self.event.set()


def test_stop_request_writes_a_final_checkpoint_and_resume_skips_the_steps_done(digits, tmp_path):
    import threading

    data = digits[0]
    config = small_config(max_steps_per_epoch=6, full_stage=common_pb2.TrainingStage(epochs=2, learning_rate=3e-3))
    stop = threading.Event()
    hooks = StopAfter(8, stop)
    run = trainer(config, data, tmp_path, stop_event=stop, progress_seconds=0, hooks=hooks)
    result = run.run()
    assert result.status == "stopped"
    # Every progress event says how far training is: step of the planned 2 epochs x 6 steps.
    assert [(p.step, p.total_steps) for p in hooks.seen[:3]] == [(1, 12), (2, 12), (3, 12)]
    store = LocalObjectStore(tmp_path / "store")
    state = json.loads(store.get_bytes(json.loads(store.get_bytes("models/job/checkpoints/latest.json"))["key"]
                                       + "state.json"))
    assert (state["stage"], state["epoch"], state["step_in_epoch"], state["global_step"]) == (2, 1, 2, 8)
    assert result.checkpoint_uri.endswith("s2-e0001-step000002/")

    resumed = trainer(config, data, tmp_path).run()
    assert resumed.status == "succeeded"
    assert resumed.resumed_from == {"stage": 2, "epoch": 1, "step_in_epoch": 2}
    assert resumed.history[-1]["step"] == 12 and len(resumed.history) == 2


def _encode(image: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format=fmt)
    return out.getvalue()


def test_digits_reach_90_percent_and_the_export_matches_keras(digits, tmp_path):
    data, val_images, val_labels = digits
    config = small_config(full_stage=common_pb2.TrainingStage(epochs=5, learning_rate=3e-3))
    run = trainer(config, data, tmp_path)
    result = run.run()
    assert result.history[-1]["val_accuracy"] > 0.90, result.history[-1]
    assert result.history[-1]["loss"] == pytest.approx(
        result.history[-1]["data_loss"] + result.history[-1]["regularization_loss"])
    assert result.history[-1]["regularization_loss"] > 0  # Adam: L2 term reported apart

    store = run.store
    uris = export.publish(result.network, data.label_map(), "{}", result.history, SIZE, store, "models/job/",
                          tmp_path / "work")
    assert uris["model"].endswith("models/job/saved_model/")
    assert store.exists("models/job/saved_model/assets/labels.json")
    assert store.exists("models/job/training_curves.png") and store.exists("models/job/manifest.json")
    loaded = tf.saved_model.load(str(store.root / "models/job/saved_model"))
    signature = loaded.signatures["serving_default"]
    assert list(signature.structured_input_signature[1]) == ["image_bytes"]

    batch = [_encode(val_images[i], "PNG") for i in range(6)] + [_encode(val_images[i], "JPEG") for i in range(2)]
    served = signature(image_bytes=tf.constant(batch))
    images = tf.stack([decode_for_serving(tf.constant(b), SIZE) for b in batch])
    expected = tf.nn.softmax(result.network.model(images, training=False)["label"]).numpy()
    np.testing.assert_allclose(served["probabilities_label"].numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(served["class_ids_label"].numpy(), expected.argmax(-1))
    assert [s.decode() for s in served["labels_label"].numpy()] == [str(i) for i in expected.argmax(-1)]
    assert (served["class_ids_label"].numpy()[:6] == val_labels[:6]).mean() >= 0.5


def test_an_epoch_resumed_after_k_batches_sees_exactly_the_remaining_examples(digits):
    data = digits[0]
    aug = common_pb2.Augmentation()
    full = [labels.numpy() for _, labels in data.train_dataset(3, 7, SIZE, 50, aug)]
    resumed = [labels.numpy() for _, labels in data.train_dataset(3, 7, SIZE, 50, aug, skip_batches=4)]
    np.testing.assert_array_equal(np.concatenate(full[4:]), np.concatenate(resumed))
    other_epoch = [labels.numpy() for _, labels in data.train_dataset(4, 7, SIZE, 50, aug)]
    assert not np.array_equal(np.concatenate(full), np.concatenate(other_epoch))  # reshuffled per epoch


class PlanRecorder(Hooks):
    def __init__(self):
        self.plans = []

    def planned(self, budget, config, measured):
        self.plans.append((budget, config, measured))


@pytest.mark.parametrize("images_per_second, budget_seconds", [(1000.0, 600.0), (10.0, 120.0)],
                         ids=["recipe-epochs-fit", "not-one-epoch-fits"])
def test_time_budget_sizes_the_run_from_the_measured_throughput(digits, tmp_path, monkeypatch,
                                                                images_per_second, budget_seconds):
    """The plan, not the wall time: with a throughput fixed by the test, a generous budget keeps the
    recipe's 4 epochs; a budget too small for one epoch trains one shorter epoch, without warm-up."""
    data = digits[0]
    monkeypatch.setattr(Trainer, "_measure_throughput", lambda self, network, losses: (images_per_second,
                                                                                      images_per_second * 5))
    hooks = PlanRecorder()
    run = trainer(small_config(), data, tmp_path, hooks=hooks, time_budget_seconds=budget_seconds)
    result = run.run()
    [(budget, config, measured)] = hooks.plans
    assert measured["images_per_second"] == images_per_second and budget.fits
    assert run.config is config and config.full_stage.epochs == budget.epochs == len(result.history)
    full_steps = data.steps_per_epoch(64)
    if images_per_second == 1000.0:
        assert budget.epochs == 4 and budget.steps_per_epoch == full_steps and not config.max_steps_per_epoch
    else:
        assert budget.epochs == 1 and 1 <= budget.steps_per_epoch < full_steps
        assert config.max_steps_per_epoch == budget.steps_per_epoch == result.history[0]["step"]
        assert config.warmup_epochs == 0
    assert measured["spent_seconds"] + budget.planned_training_seconds + budget.evaluation_margin_seconds \
        <= budget_seconds


def test_throughput_probe_measures_and_leaves_the_weights_as_they_were(digits, tmp_path):
    run = trainer(small_config(), digits[0], tmp_path, time_budget_seconds=60.0)
    network, losses = run._build()
    before = [w.copy() for w in network.model.get_weights()]  # BatchNorm statistics included
    train_ips, eval_ips = run._measure_throughput(network, losses)
    assert train_ips > 0 and eval_ips >= train_ips
    for old, new in zip(before, network.model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
