"""Suspected mislabels in the training data, out of sample: confident learning on known probabilities,
the folds, one distinct image per pool entry, and a real K-fold run that finds flipped labels."""

import numpy as np
import pytest

from classforge.v1 import common_pb2
from services.cli import main as cli_main
from services.common import mislabel_review
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.storage import LocalObjectStore
from services.trainer import kfold
from services.trainer.backbones import Task
from services.trainer.config import with_defaults
from services.trainer.data import ArrayData


def test_confident_learning_flags_confident_other_classes_and_ranks_by_margin():
    labels = np.array([0, 0, 0, 1, 1, 1])
    probabilities = np.array([[.9, .1], [.8, .2], [.2, .8],   # image 2: labelled 0, confidently 1
                              [.1, .9], [.3, .7], [.55, .45]])  # image 5: labelled 1, unsure
    flags = kfold.confident_learning(labels, probabilities)
    # thresholds: class 0 mean(.9,.8,.2)=.633, class 1 mean(.9,.7,.45)=.683
    assert flags.thresholds == pytest.approx([1.9 / 3, 2.05 / 3])
    assert flags.flagged.tolist() == [2]  # image 5's 0.55 is below class 0's threshold: not confident
    assert flags.ranked[:2].tolist() == [2, 5]  # normalised margins -0.6, -0.1
    assert flags.score[2] == pytest.approx(0.6) and flags.score[0] == 0.0


def test_folds_are_stratified_and_refuse_what_cannot_be_folded():
    labels = np.array([0] * 9 + [1] * 6)
    held = kfold.fold_indices(labels, 3, seed=1)
    assert sorted(np.concatenate(held).tolist()) == list(range(15))
    assert all(np.bincount(labels[h], minlength=2).tolist() == [3, 2] for h in held)
    with pytest.raises(InvalidArgument, match="at least 2"):
        kfold.fold_indices(labels, 1, seed=1)
    with pytest.raises(FailedPrecondition, match="only 2 images"):
        kfold.fold_indices(np.array([0, 0, 0, 1, 1]), 3, seed=1)


def _colour_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class i: channel i dominant, so any model learns it at once."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 3
    images = rng.uniform(30, 90, (count, 16, 16, 3))
    images[np.arange(count), :, :, labels] += 120
    return images.astype(np.uint8), labels


def test_k_fold_scores_every_image_out_of_sample_and_flags_flipped_labels(tmp_path):
    images, labels = _colour_images(90, seed=3)
    flipped = np.array([4, 31, 62])
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + 1) % 3
    tasks = (Task("label", ("red", "green", "blue")),)
    # the val split joins the pool too (never the test split)
    data = ArrayData({"train": (images[:72], noisy[:72]), "val": (images[72:], noisy[72:])}, tasks)
    pool = kfold.gather_pool(data)
    assert len(pool.labels) == 90 and pool.image_ids[0] == "train:0" and pool.image_ids[72] == "val:0"
    config = with_defaults(common_pb2.TrainingConfig(
        input_size=16, batch_size=16, backbone=common_pb2.BACKBONE_SMALL_CNN, width_multiplier=0.25, seed=7,
        optimizer=common_pb2.OPTIMIZER_ADAM, full_stage=common_pb2.TrainingStage(epochs=4, learning_rate=3e-3),
        augmentation=common_pb2.Augmentation()))
    probabilities = kfold.out_of_sample_probabilities(config, data, pool, 3, tmp_path)
    assert probabilities.shape == (90, 3) and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    flags = kfold.confident_learning(pool.labels[:, 0], probabilities)
    assert set(flipped) <= set(flags.ranked[:6].tolist())  # the three flips lead the ranking
    rows = kfold.review_rows(pool, "label", tasks[0].classes, probabilities, flags)
    assert {r["image_id"] for r in rows} >= {f"train:{i}" for i in flipped}
    assert all(r["given_label"] != r["predicted_label"] for r in rows[:3])


def test_find_mislabels_command_on_records_scores_each_distinct_image_once(tmp_path, capsys):
    builder = pytest.importorskip("services.tfrecords.builder")
    sample = pytest.importorskip("tests.support.sample_dataset")
    store = LocalObjectStore(tmp_path / "data")
    items = sample.digits_items(90, size=16)
    # the training split as ingest writes it when balancing: some images oversampled (listed twice)
    train = items[:60] + items[:10]
    sample.write_dataset(store, "d", {"train": train, "val": items[60:], "test": []}, sample.DIGIT_TASKS[:1])
    prefix = builder.RecordsBuilder(workers=1).build(store, "d", builder.BuildOptions(min_shards=1)).prefix
    config = tmp_path / "train.yaml"
    config.write_text("input_size: 16\nbatch_size: 16\nbackbone: small_cnn\nwidth_multiplier: 0.25\n"
                      "max_steps_per_epoch: 2\nfull_stage: {epochs: 1}\n")
    out = tmp_path / "out"
    assert cli_main(["find-mislabels", str(tmp_path / "data" / prefix), "--folds", "2", "--config", str(config),
                     "--out", str(out)]) == 0
    scores = np.load(out / "out_of_sample.npz")
    assert len(scores["image_ids"]) == len(set(scores["image_ids"].tolist())) == 90
    assert all(len(i) == 64 for i in scores["image_ids"].tolist())  # the images' sha256, from the records
    header, rows = mislabel_review.read((out / mislabel_review.FILE_NAME).read_text())
    assert tuple(header) == mislabel_review.COLUMNS
    assert "of 90 images flagged" in capsys.readouterr().out


def test_find_mislabels_command_refuses_a_folder_without_records(tmp_path, capsys):
    assert cli_main(["find-mislabels", str(tmp_path / "none"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and str(tmp_path / "none") in err
