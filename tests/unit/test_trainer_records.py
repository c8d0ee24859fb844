"""The trainer on real TFRecords (built by services.tfrecords, read through its reader): multi-task
labels with unknowns, class counts from the manifest, a short run."""

import pytest

from classforge.v1 import common_pb2
from services.common.storage import LocalObjectStore
from services.trainer.config import with_defaults
from services.trainer.data import open_records
from services.trainer.loop import Trainer

sample = pytest.importorskip("tests.support.sample_dataset")
builder = pytest.importorskip("services.tfrecords.builder")


def build_digit_records(store, dataset_id="digits", train=400, val=100, tasks=2, size=16) -> str:
    items = sample.digits_items(train + val, size=size, tasks=tasks)
    sample.write_dataset(store, dataset_id, {"train": items[:train], "val": items[train:], "test": []},
                         sample.DIGIT_TASKS[:tasks])
    result = builder.RecordsBuilder(workers=1).build(store, dataset_id, builder.BuildOptions(min_shards=4))
    return result.prefix


def test_records_pipeline_trains_two_tasks(tmp_path):
    store = LocalObjectStore(tmp_path / "store")
    prefix = build_digit_records(store)
    config = with_defaults(common_pb2.TrainingConfig(
        input_size=16, batch_size=32, backbone=common_pb2.BACKBONE_SMALL_CNN, width_multiplier=0.25,
        class_weights=True, center_loss_weight=0.01, label_smoothing=0.1, max_steps_per_epoch=4,
        task_losses=[common_pb2.TaskLoss(task="parity", weight=0.5)],
        augmentation=common_pb2.Augmentation(crop_scale_min=0.8, jpeg_quality_min=50, rescale_min=0.5),
        full_stage=common_pb2.TrainingStage(epochs=2, learning_rate=0.05)))
    data = open_records(store, store.uri(prefix), config, tmp_path / "cache")
    assert [t.name for t in data.tasks] == ["digit", "parity"]
    assert data.counts["train"] == 400 and data.counts["val"] == 100
    assert sum(data.class_counts["digit"]) == 400 and len(data.class_counts["parity"]) == 2
    assert data.tasks[1].weight == 0.5

    images, labels = next(iter(data.train_dataset(0, 0, 16, 32, config.augmentation)))
    assert images.shape == (32, 16, 16, 3) and labels.shape == (32, 2)
    assert (labels.numpy()[:, 1] == -1).any()  # unknown parity labels reach the loss masked
    # Every pipeline runs without tf.data's autotuner: destroying an autotuned iterator waits out the
    # tuner's sleep (up to a minute), which stalled every epoch's end (reader.pipeline_options).
    for ds in (data.train_dataset(0, 0, 16, 32, config.augmentation), data.eval_dataset("val", 16, 32),
               data.reader.dataset("train", batch_size=8)):
        assert ds.options().autotune.enabled is False

    result = Trainer(config, data, store, "models/j/", tmp_path / "work").run()
    assert result.status == "succeeded" and len(result.history) == 2
    last = result.history[-1]
    assert {"accuracy/digit", "accuracy/parity", "val_accuracy/digit", "val_accuracy/parity"} <= set(last)
