"""`python -m bench.mislabels`: how well K-fold confident learning finds flipped training labels, against
cleanlab's `find_label_issues` on the same out-of-sample probabilities, and what fixing them is worth.

Data: scikit-learn's digits (1,797 images of 8x8, upsampled to 16x16), a stratified 25 % natural test
split, and NOISE (8 %) of the training labels flipped to another class at random, seeded.

1. First run: trained on the noisy labels; test accuracy.
2. K folds (services/trainer/kfold.py) score every training image out of sample. For us and for
   cleanlab: the fraction of the flipped images within the top 2 x (number flipped) of the ranking, and
   the precision/recall of each one's own flagged set (cleanlab: `find_label_issues`, default
   prune_by_noise_rate; its full ranking by `get_label_quality_scores` is reported too).
3. The oracle review: the images in our top 2 x flipped get their true labels (a person looking at them
   would), and a second run starts from the first run's weights (what `--from JOB` does). Test accuracy.

Numbers only, printed as a table and as JSON (--json); nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NOISE = 0.08


def digits_16px() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).round().astype(np.uint8)
    return np.kron(images, np.ones((1, 2, 2), np.uint8)), digits.target.astype(np.int64)


def recipe(epochs: int, seed: int):
    from classforge.v1 import common_pb2
    from services.trainer.config import with_defaults

    return with_defaults(common_pb2.TrainingConfig(
        input_size=16, batch_size=32, backbone=common_pb2.BACKBONE_SMALL_CNN, width_multiplier=0.5, seed=seed,
        optimizer=common_pb2.OPTIMIZER_ADAM, full_stage=common_pb2.TrainingStage(epochs=epochs, learning_rate=2e-3),
        # digits must not be mirrored or cut: a light box jitter only
        augmentation=common_pb2.Augmentation(crop_scale_min=0.85, crop_scale_max=1.0)))


def train(config, images, labels, tasks, workdir: Path, initial_weights: Path | None = None):
    from services.common.storage import LocalObjectStore
    from services.trainer.data import ArrayData
    from services.trainer.loop import Trainer

    data = ArrayData({"train": (images, labels)}, tasks)
    store = LocalObjectStore(workdir / "store")
    if initial_weights is not None:  # the whole model of an earlier run, as `--from JOB` starts
        store.put_file("initial/model.weights.h5", initial_weights)
        config.initial_weights_uri = "initial/model.weights.h5"
    return Trainer(config, data, store, "", workdir / "work",
                   log_fn=lambda _: None).run().network, data


def accuracy(network, data, images, labels, config) -> float:
    from services.trainer import kfold

    probabilities = kfold.predict(network, data, _as_rgb(images), config.input_size, config.batch_size)
    return float(np.mean(np.argmax(probabilities[data.tasks[0].name], axis=1) == labels))


def _as_rgb(images: np.ndarray) -> np.ndarray:
    return np.repeat(images[..., None], 3, axis=-1)


def found(ranking: np.ndarray, flipped: set[int], top: int) -> float:
    return len(set(ranking[:top].tolist()) & flipped) / len(flipped)


def precision_recall(flagged: np.ndarray, flipped: set[int]) -> tuple[float, float, int]:
    hits = len(set(flagged.tolist()) & flipped)
    return (hits / len(flagged) if len(flagged) else 0.0), hits / len(flipped), len(flagged)


def run(folds: int = 5, epochs: int = 15, seed: int = 0) -> dict:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.model_selection import train_test_split

    from services.trainer import kfold
    from services.trainer.backbones import Task

    images, labels = digits_16px()
    train_x, test_x, train_y, test_y = train_test_split(images, labels, test_size=0.25, stratify=labels,
                                                        random_state=seed)
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(train_y), size=round(NOISE * len(train_y)), replace=False)
    noisy = train_y.copy()
    noisy[flipped] = (train_y[flipped] + rng.integers(1, 10, size=len(flipped))) % 10
    flipped_set = set(flipped.tolist())
    tasks = (Task("digit", tuple(str(d) for d in range(10))),)
    config = recipe(epochs, seed)
    out: dict = {"train_images": len(train_y), "test_images": len(test_y), "flipped": len(flipped), "folds": folds,
                 "epochs": epochs}
    with tempfile.TemporaryDirectory(prefix="classforge-bench-mislabels-") as scratch:
        scratch = Path(scratch)
        started = time.perf_counter()
        first, data = train(config, train_x, noisy, tasks, scratch / "first")
        out["first_run_test_accuracy"] = accuracy(first, data, test_x, test_y, config)
        out["first_run_seconds"] = time.perf_counter() - started

        started = time.perf_counter()
        pool = kfold.gather_pool(data)
        probabilities = kfold.out_of_sample_probabilities(config, data, pool, folds, scratch / "folds",
                                                          say=lambda _: None)
        out["kfold_seconds"] = time.perf_counter() - started
        top = 2 * len(flipped)
        ours = kfold.confident_learning(noisy, probabilities)
        theirs = np.asarray(find_label_issues(noisy, probabilities, return_indices_ranked_by="normalized_margin"))
        out["classforge_found_in_top_2x"] = found(ours.ranked, flipped_set, top)
        # find_label_issues returns only the images it flags (ranked), so its "top 2x" is its whole flagged
        # set; cleanlab's ranking of every image (label quality scores, normalized margin) is reported too
        out["cleanlab_found_in_top_2x"] = found(theirs, flipped_set, top)
        quality = get_label_quality_scores(noisy, probabilities, method="normalized_margin")
        out["cleanlab_ranking_found_in_top_2x"] = found(np.argsort(quality, kind="stable"), flipped_set, top)
        for name, flagged in (("classforge", ours.flagged), ("cleanlab", theirs)):
            p, r, n = precision_recall(flagged, flipped_set)
            out[f"{name}_flagged"], out[f"{name}_precision"], out[f"{name}_recall"] = n, p, r

        # the oracle review of our top 2x: true labels back, then a second run from the first one's weights
        reviewed = noisy.copy()
        reviewed[ours.ranked[:top]] = train_y[ours.ranked[:top]]
        weights = scratch / "first" / "model.weights.h5"
        first.model.save_weights(weights)
        started = time.perf_counter()
        second, _ = train(recipe(max(epochs // 2, 1), seed + 1), train_x, reviewed, tasks, scratch / "second",
                          weights)
        out["labels_still_wrong_after_review"] = int(np.sum(reviewed != train_y))
        out["second_run_test_accuracy"] = accuracy(second, data, test_x, test_y, config)
        out["second_run_seconds"] = time.perf_counter() - started
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mislabels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.folds, args.epochs, args.seed)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for key, value in result.items():
            print(f"{key:<36} {value:.4f}" if isinstance(value, float) else f"{key:<36} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
