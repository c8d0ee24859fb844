"""Suspected mislabels in the training data, scored out of sample (confident learning).

The evaluator only sees the test split, and a model judging the images it was trained on has mostly
memorised their labels. So the non-test images (train and val, each distinct image once: the training
split's oversampled copies would otherwise leak between folds) are cut into K stratified folds; K models
are trained, each on K-1 folds with the job's own recipe, and each scores the fold it never saw. Every
image then has out-of-sample class probabilities.

Flagging follows confident learning (Northcutt, Jiang & Chuang, JAIR 2021): a class's threshold is the
mean probability the models give it on the images labelled with it; an image whose confident class (the
most probable class at or above its threshold) is not its label is flagged. Images are ranked by the
normalised margin (the best other class's probability minus the given label's), the ranking cleanlab's
`find_label_issues` uses too, so `bench/mislabels.py` can compare the two on the same probabilities.
The result is a `mislabels.csv` review file (services/common/mislabel_review.py) that
`classforge dataset relabel` reads back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from classforge.v1 import common_pb2
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.preprocessing import preprocess_eval
from services.common.storage import LocalObjectStore
from services.trainer.data import AUTOTUNE, TrainingData

log = logging.getLogger("classforge.trainer")
SPLITS = ("train", "val")  # never the test split: it stays the untouched judge


@dataclass
class Pool:
    """The distinct non-test images, in memory: items as the data's `to_image` takes them (encoded
    bytes or uint8 arrays), labels [N, tasks], ids and file names for the review file."""

    items: np.ndarray
    labels: np.ndarray
    image_ids: list[str]
    paths: list[str]


class PoolData(TrainingData):
    """A subset of a Pool as the trainer's "train" split (the same pipeline and augmentation as a job)."""

    def __init__(self, parent: TrainingData, pool: Pool, indices: np.ndarray):
        self.parent = parent
        self.items, self.labels = pool.items[indices], pool.labels[indices]
        class_counts = {t.name: np.bincount(self.labels[:, i][self.labels[:, i] >= 0], minlength=len(t.classes)
                                            ).tolist()
                        for i, t in enumerate(parent.tasks) if not t.regression}
        super().__init__(parent.tasks, {"train": len(indices)}, class_counts)

    def source(self, split: str, seed: int | None = None) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices((self.items, self.labels))

    def parse_batch(self, items, labels):
        return items, labels

    def to_image(self, item):
        return self.parent.to_image(item)


def gather_pool(data: TrainingData, batch_size: int = 256) -> Pool:
    items, labels, ids, paths = [], [], [], []
    seen: set[str] = set()
    for split in SPLITS:
        if not data.has(split):
            continue
        offset = 0
        for raw in data.source(split).batch(batch_size):
            raw = raw if isinstance(raw, tuple) else (raw,)
            batch_items, batch_labels = (np.asarray(v) for v in data.parse_batch(*raw))
            batch_ids, batch_paths = data.identities(*raw, offset=offset, split=split)
            offset += len(batch_items)
            for item, label, image_id, path in zip(batch_items, batch_labels, batch_ids, batch_paths, strict=True):
                if image_id in seen:
                    continue  # an oversampled copy: one image, one out-of-sample score
                seen.add(image_id)
                items.append(item)
                labels.append(label)
                ids.append(image_id)
                paths.append(path)
    if not items:
        raise FailedPrecondition("no train or val images to score")
    return Pool(np.stack(items) if np.asarray(items[0]).ndim else np.asarray(items, dtype=object),
                np.asarray(labels, np.int64).reshape(len(items), -1), ids, paths)


def fold_indices(labels: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """K stratified folds of the first task's labels (held-out indices per fold)."""
    from sklearn.model_selection import StratifiedKFold

    if folds < 2:
        raise InvalidArgument("folds", f"must be at least 2 (got {folds})")
    counts = np.bincount(labels[labels >= 0])
    smallest = int(counts[counts > 0].min()) if counts.size else 0
    if smallest < folds:
        raise FailedPrecondition(f"a class has only {smallest} images: {folds} folds need at least {folds} per class")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed % (2 ** 32))
    return [held for _, held in splitter.split(np.zeros(len(labels)), labels)]


def predict(network, data: TrainingData, items: np.ndarray, size: int, batch_size: int) -> dict[str, np.ndarray]:
    """Softmax probabilities per classification task on the evaluation preprocessing."""
    @tf.autograph.experimental.do_not_convert
    def prepare(batch):
        return tf.map_fn(lambda item: preprocess_eval(data.to_image(item), size), batch,
                         fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))

    ds = tf.data.Dataset.from_tensor_slices(items).batch(batch_size).map(prepare, num_parallel_calls=AUTOTUNE)
    outputs: dict[str, list[np.ndarray]] = {t.name: [] for t in data.tasks if not t.regression}
    for images in ds.prefetch(AUTOTUNE):
        result = network.model(images, training=False)
        for name in outputs:
            outputs[name].append(tf.nn.softmax(result[name], axis=-1).numpy())
    return {name: np.concatenate(parts) for name, parts in outputs.items()}


def out_of_sample_probabilities(config: common_pb2.TrainingConfig, data: TrainingData, pool: Pool, folds: int,
                                workdir: Path, say: Callable[[str], None] = log.info) -> np.ndarray:
    """[N, classes] of the first task: each row from the model that never trained on that image."""
    from services.trainer.loop import Trainer

    task = data.tasks[0]
    probabilities = np.zeros((len(pool.labels), len(task.classes)), np.float32)
    for k, held in enumerate(fold_indices(pool.labels[:, 0], folds, int(config.seed))):
        train = np.setdiff1d(np.arange(len(pool.labels)), held)
        say(f"fold {k + 1}/{folds}: training on {len(train)} images, scoring {len(held)}")
        fold_dir = Path(workdir) / f"fold-{k + 1}"
        trainer = Trainer(config, PoolData(data, pool, train), LocalObjectStore(fold_dir / "store"), "",
                          fold_dir / "work", log_fn=say)
        network = trainer.run().network
        probabilities[held] = predict(network, data, pool.items[held], config.input_size, config.batch_size)[task.name]
    return probabilities


@dataclass
class Flags:
    ranked: np.ndarray  # every image index, most suspect first (normalised margin, ascending)
    flagged: np.ndarray  # the confident-learning flags, in ranked order
    score: np.ndarray  # best other class's probability minus the given label's, clipped at 0
    thresholds: np.ndarray  # per class


def confident_learning(labels: np.ndarray, probabilities: np.ndarray) -> Flags:
    labels = np.asarray(labels, np.int64)
    n, classes = probabilities.shape
    thresholds = np.array([probabilities[labels == j, j].mean() if np.any(labels == j) else 1.0
                           for j in range(classes)])
    above = probabilities >= thresholds[None, :]
    confident = np.where(above.any(axis=1), np.argmax(np.where(above, probabilities, -1.0), axis=1), -1)
    given = probabilities[np.arange(n), labels]
    others = probabilities.copy()
    others[np.arange(n), labels] = -1.0
    margin = given - others.max(axis=1)  # cleanlab's "normalized_margin"
    ranked = np.argsort(margin, kind="stable")
    is_flagged = (confident >= 0) & (confident != labels)
    return Flags(ranked, ranked[is_flagged[ranked]], np.clip(-margin, 0.0, 1.0), thresholds)


def review_rows(pool: Pool, task_name: str, classes: tuple[str, ...], probabilities: np.ndarray,
                flags: Flags) -> list[dict]:
    """The flagged images as mislabels.csv rows, most suspect first."""
    rows = []
    for i in flags.flagged:
        predicted = int(np.argmax(probabilities[i]))
        rows.append({"image_id": pool.image_ids[i], "path": pool.paths[i], "task": task_name,
                     "given_label": classes[int(pool.labels[i, 0])], "predicted_label": classes[predicted],
                     "confidence": f"{float(probabilities[i, predicted]):.6f}",
                     "score": f"{float(flags.score[i]):.6f}"})
    return rows
