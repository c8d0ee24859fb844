"""Options of the loop: initial weights from an earlier job, regression heads with SmoothL1, XLA and
mixed precision (with its loss-scaling optimiser checkpointed), early stopping, multi-scale epochs."""

import numpy as np
import pytest

from classforge.v1 import common_pb2
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.storage import LocalObjectStore
from services.demo_data import load_digits
from services.trainer import export
from services.trainer.backbones import Task
from services.trainer.config import with_defaults
from services.trainer.data import ArrayData
from services.trainer.loop import Trainer

SIZE = 16


@pytest.fixture(scope="module")
def digits():
    images, labels, names = load_digits(SIZE)
    return images[:512], labels[:512], names


def cfg(**fields):
    base = dict(input_size=SIZE, batch_size=32, backbone=common_pb2.BACKBONE_SMALL_CNN, width_multiplier=0.25,
                max_steps_per_epoch=3, augmentation=common_pb2.Augmentation(brightness=0.1),
                full_stage=common_pb2.TrainingStage(epochs=1, learning_rate=0.05))
    base.update(fields)
    return with_defaults(common_pb2.TrainingConfig(**base))


def data_for(digits, tasks=None, labels=None):
    images, digit_labels, names = digits
    labels = digit_labels if labels is None else labels
    tasks = tasks or (Task("label", names),)
    return ArrayData({"train": (images[:384], labels[:384]), "val": (images[384:], labels[384:])}, tasks)


def test_initial_weights_from_an_earlier_jobs_model(digits, tmp_path):
    store = LocalObjectStore(tmp_path / "store")
    data = data_for(digits)
    first = Trainer(cfg(), data, store, "models/a/", tmp_path / "a").run()
    export.publish(first.network, data.label_map(), "{}", first.history, SIZE, store, "models/a/", tmp_path / "a")
    expected = first.network.backbone.get_weights()

    second = Trainer(cfg(initial_weights_uri=store.uri("models/a/saved_model") + "/",
                         head_stage=common_pb2.TrainingStage(epochs=1, learning_rate=0.01),
                         full_stage=common_pb2.TrainingStage(skip=True)), data, store, "models/b/", tmp_path / "b")
    result = second.run()
    for got, want in zip(result.network.backbone.get_weights(), expected, strict=True):
        np.testing.assert_array_equal(got, want)  # loaded, then frozen in the head-only stage

    with pytest.raises(InvalidArgument):
        Trainer(cfg(initial_weights_uri="imagenet"), data, store, "models/c/", tmp_path / "c").run()
    with pytest.raises(FailedPrecondition, match="do not fit"):
        Trainer(cfg(initial_weights_uri="models/a/", width_multiplier=0.5), data, store, "models/d/",
                tmp_path / "d").run()


def test_job_uri_starts_from_an_earlier_jobs_model_straight_to_fine_tuning_or_rebuilds_the_head(digits, tmp_path):
    """`job://<id>`: the same classes load the whole model and skip the head stage; other classes keep
    the backbone, rebuild the head and train it first, saying so with both class lists."""
    store = LocalObjectStore(tmp_path / "store")
    data = data_for(digits)
    first = Trainer(cfg(), data, store, "models/a/", tmp_path / "a").run()
    export.publish(first.network, data.label_map(), "{}", first.history, SIZE, store, "models/a/", tmp_path / "a")

    def started(config, data, name):
        """The network as loaded, before any step (a stop requested up front), and the stage it was in."""
        said: list[str] = []
        trainer = Trainer(config, data, store, f"models/{name}/", tmp_path / name, log_fn=said.append)
        trainer.stop_event.set()
        result = trainer.run()
        return result, trainer.checkpoints.latest()["stage"], said

    config = cfg(initial_weights_uri="job://a")
    assert config.head_stage.epochs == 2 and not config.head_stage.skip  # the default the loop overrides
    result, stage, said = started(config, data, "same")
    assert stage == 2 and result.initial_weights["whole_model"] and result.initial_weights["job_id"] == "a"
    for got, want in zip(result.network.model.get_weights(), first.network.model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)  # heads included
    assert any("straight to the fine-tune stage" in line for line in said)
    finished = Trainer(config, data, store, "models/b/", tmp_path / "b").run()
    assert {record["stage"] for record in finished.history} == {2}

    images, labels, names = digits
    halves = ArrayData({"train": (images[:384], labels[:384] % 2)}, (Task("label", ("even", "odd")),))
    result, stage, said = started(config, halves, "other")
    assert stage == 1 and not result.initial_weights["whole_model"]  # the rebuilt head is trained first
    for got, want in zip(result.network.backbone.get_weights(), first.network.backbone.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    [message] = [line for line in said if "differ" in line]
    assert f"job a's classes (label: {list(names)}) differ from this data's (label: ['even', 'odd'])" in message
    assert "head is rebuilt" in message

    with pytest.raises(FailedPrecondition, match="job 'nobody' has no finished model"):
        Trainer(cfg(initial_weights_uri="job://nobody"), data, store, "models/n/", tmp_path / "n").run()
    with pytest.raises(FailedPrecondition, match="job 'a''s weights do not fit this network"):
        Trainer(cfg(initial_weights_uri="job://a", width_multiplier=0.5), data, store, "models/w/",
                tmp_path / "w").run()
    with pytest.raises(InvalidArgument, match="config.initial_weights_uri: 'job://a/b' is not job://<job id>"):
        cfg(initial_weights_uri="job://a/b")


def test_regression_head_uses_smooth_l1_and_exports_a_value(digits, tmp_path):
    images, labels, names = digits
    tasks = (Task("label", names), Task("value", (), regression=True))
    data = data_for(digits, tasks, np.stack([labels, labels], axis=1))
    config = cfg(task_losses=[common_pb2.TaskLoss(task="value", regression=True, weight=0.1)])
    result = Trainer(config, data, LocalObjectStore(tmp_path / "s"), "models/r/", tmp_path / "w").run()
    last = result.history[-1]
    assert "val_loss/value" in last and "val_accuracy/value" not in last and np.isfinite(last["loss"])
    serve = export.serving_fn(result.network, SIZE)
    import tensorflow as tf
    outputs = serve(tf.stack([tf.io.encode_png(np.repeat(images[0][..., None], 3, -1))]))
    assert outputs["value_value"].shape == (1,) and outputs["probabilities_label"].shape == (1, 10)


def test_xla_and_mixed_precision_train_and_checkpoint(digits, tmp_path):
    data = data_for(digits)
    for name, options in (("xla", {"xla": True}), ("mixed", {"mixed_precision": True})):
        store = LocalObjectStore(tmp_path / name)
        config = cfg(full_stage=common_pb2.TrainingStage(epochs=2, learning_rate=0.05), **options)
        result = Trainer(config, data, store, "models/x/", tmp_path / f"w{name}").run()
        assert result.status == "succeeded" and np.isfinite(result.history[-1]["loss"])
        assert store.exists("models/x/checkpoints/latest.json")


def test_multi_scale_epochs_and_early_stopping(digits, tmp_path):
    data = data_for(digits)
    config = cfg(augmentation=common_pb2.Augmentation(multi_scale_sizes=[16, 24]), early_stopping_patience=2,
                 full_stage=common_pb2.TrainingStage(epochs=6, learning_rate=0.05))
    trainer = Trainer(config, data, LocalObjectStore(tmp_path / "s"), "models/m/", tmp_path / "w")
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9, 0.9])  # best at epoch 2, then two rounds without improvement
    best_weights = {}
    evaluate = trainer.evaluate

    def scripted(network, losses, split="val"):
        metrics = evaluate(network, losses, split)
        metrics["val_accuracy"] = next(scores)
        if metrics["val_accuracy"] == 0.7:
            best_weights["w"] = [w.copy() for w in network.model.get_weights()]
        return metrics

    trainer.evaluate = scripted
    result = trainer.run()
    assert [h["input_size"] for h in result.history] == [16, 24, 16, 24]
    assert result.early_stopped and len(result.history) == 4
    for got, want in zip(result.network.model.get_weights(), best_weights["w"], strict=True):
        np.testing.assert_array_equal(got, want)  # the best round's weights are kept
