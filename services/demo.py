"""`make demo`: the whole pipeline, embedded, on real data.

Writes Fashion-MNIST (the Debian package dataset-fashion-mnist: 60,000 + 10,000 28x28 images of
10 classes) as one folder per label — the layout a user has — and runs `classforge run` on it
with the automatic recipe and a time budget: ingest (statistics, balancing, a natural 1/7 test split),
TFRecords, training, evaluation with the blessing gate, publication to the model server, and one
Classify through the inference service. Clothes keep their label in a mirror, so the spec says
`mirror_invariant` and the recipe may flip them.

The budget covers training and evaluation; writing the PNGs, ingest and the records come before it
(1–1½ minutes on 2 cores), so the default of 3 minutes ends `make demo` within 5 minutes on a 2-core
AVX2 machine.

    DEMO_OUT (default out/demo)   DEMO_TIME_BUDGET (default 3m; e.g. 90s, 10m)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

from classforge.v1 import common_pb2
from services.demo_data import FASHION_MNIST_CLASSES, load_fashion_mnist, write_image_folders


def write_fashion_mnist(folder: Path) -> None:
    marker = folder / ".complete"
    if marker.exists():
        print(f"using the Fashion-MNIST folders already in {folder}")
        return
    train_images, train_labels = load_fashion_mnist("train")
    test_images, test_labels = load_fashion_mnist("test")
    images = np.concatenate([train_images, test_images])
    labels = np.concatenate([train_labels, test_labels])
    started = time.monotonic()
    count = write_image_folders(images, labels, FASHION_MNIST_CLASSES, folder)
    marker.touch()
    print(f"wrote {count} Fashion-MNIST PNGs as one folder per label into {folder} "
          f"({time.monotonic() - started:.0f} s)")


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    out = Path(os.environ.get("DEMO_OUT", "out/demo"))
    budget = os.environ.get("DEMO_TIME_BUDGET", "3m")
    images = out / "fashion-mnist"
    write_fashion_mnist(images)

    from services import embedded  # TensorFlow loads here
    spec = common_pb2.JobSpec(
        display_name="fashion-mnist demo",
        dataset=common_pb2.DatasetOptions(max_class_ratio=5, val_fraction=0.05, test_fraction=1 / 7, seed=7),
        training=common_pb2.TrainingConfig(recipe="auto", time_budget=budget, mirror_invariant=True),
        gates=common_pb2.EvaluationGates(min_accuracy=0.85, min_class_recall=0.5))
    run_dir = out / time.strftime("run-%Y%m%d-%H%M%S")
    started = time.monotonic()
    code = embedded.run(images, run_dir, spec)
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s (pipeline only); outputs in {run_dir}")
    return code


if __name__ == "__main__":
    sys.exit(main())
