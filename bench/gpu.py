"""The GPU check (#19 item 5): ResNet50 at 224 px with mixed precision, trained by the trainer's own
loop (services.trainer.loop.Trainer: its tf.data input with augmentation, its distributed train step,
a checkpoint each epoch) against a bare Keras loop (model.fit of the same network, same optimiser,
same batch, on the same images already normalised in memory) on the same card. Where there are two
GPUs or more, the same pair again under MirroredStrategy over two of them.

Prints one line per measurement and a table of images/s with the ratio ours / bare Keras. The data is
synthetic (uniform noise, 10 classes): it measures throughput, not accuracy.

    bench/gpu.sh                                  # the real check; exits 2 with a message without a GPU
    python -m bench.gpu --smoke                   # CPU, 32 px, 2 steps an epoch: the code path only

Without a GPU (and without --smoke) it exits with status 2 and says so: a CPU number for ResNet50 at
224 px would take hours and mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.keras_timing import fit_epoch_seconds

NO_GPU_EXIT = 2
CLASSES = 10


@dataclass(frozen=True)
class Plan:
    size: int  # input side in pixels
    batch: int  # global batch (split over the replicas under MirroredStrategy)
    steps: int  # steps per epoch
    epochs: int  # the first is warm-up (tracing, autotuning) and is not counted
    mixed_precision: bool
    backbone: str = "resnet50"  # a Backbone name without its prefix

    @property
    def images(self) -> int:
        return self.batch * self.steps


FULL = Plan(size=224, batch=128, steps=40, epochs=3, mixed_precision=True)
SMOKE = Plan(size=32, batch=4, steps=2, epochs=2, mixed_precision=True)


def gpu_names() -> list[str]:
    import tensorflow as tf

    return [d.name for d in tf.config.list_logical_devices("GPU")]


def training_config(plan: Plan):
    from classforge.v1 import common_pb2
    from services.trainer.config import with_defaults

    backbone = common_pb2.Backbone.Value(f"BACKBONE_{plan.backbone.upper()}")
    return with_defaults(common_pb2.TrainingConfig(
        input_size=plan.size, batch_size=plan.batch, backbone=backbone,
        mixed_precision=plan.mixed_precision, full_stage=common_pb2.TrainingStage(epochs=plan.epochs,
                                                                                   learning_rate=0.01)))


def synthetic(plan: Plan, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (plan.images, plan.size, plan.size, 3), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, plan.images, dtype=np.int64)
    return images, labels


def trainer_rate(plan: Plan, strategy, images, labels, workdir: Path) -> float:
    """images/s of the trainer's loop: the best epoch after the first."""
    from services.common.storage import LocalObjectStore
    from services.trainer.backbones import Task
    from services.trainer.data import ArrayData
    from services.trainer.loop import Trainer

    config = training_config(plan)
    data = ArrayData({"train": (images, labels)}, (Task("label", tuple(f"c{i}" for i in range(CLASSES))),))
    result = Trainer(config, data, LocalObjectStore(workdir / "store"), "models/gpu-check/", workdir / "work",
                     strategy=strategy, progress_seconds=1e9).run()
    rates = [h["images_per_second"] for h in result.history[1:]] or [result.history[-1]["images_per_second"]]
    return max(rates)


def keras_rate(plan: Plan, strategy, images, labels) -> float:
    """images/s of model.fit on the same network and optimiser: the best epoch after the first."""
    import keras
    import numpy as np
    import tensorflow as tf

    from services.trainer.backbones import Task, build_network
    from services.trainer.schedules import make_optimizer

    config = training_config(plan)
    with strategy.scope():
        network = build_network(config, (Task("label", tuple(f"c{i}" for i in range(CLASSES))),))
        model = network.model
        model.compile(optimizer=make_optimizer(config, config.full_stage.learning_rate, plan.steps, plan.epochs, 1),
                      loss={"label": keras.losses.SparseCategoricalCrossentropy(from_logits=True)})
    x = images.astype(np.float32) / 127.5 - 1.0
    dataset = (tf.data.Dataset.from_tensor_slices((x, {"label": labels})).shuffle(len(x))
               .batch(plan.batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
    times = fit_epoch_seconds(model, dataset, plan.epochs)
    return plan.images / min(times[1:] or times)


def measure(plan: Plan, gpus: list[str]) -> list[dict]:
    import tensorflow as tf

    setups = [("1 GPU" if gpus else "CPU", tf.distribute.OneDeviceStrategy(gpus[0]) if gpus
               else tf.distribute.get_strategy(), plan)]
    if len(gpus) >= 2:  # the global batch doubles, so each card keeps the per-card batch of the 1-GPU row
        two = Plan(plan.size, plan.batch * 2, plan.steps, plan.epochs, plan.mixed_precision, plan.backbone)
        setups.append(("2 GPUs MirroredStrategy", tf.distribute.MirroredStrategy(gpus[:2]), two))
    rows = []
    for name, strategy, setup in setups:
        images, labels = synthetic(setup)
        with tempfile.TemporaryDirectory(prefix="classforge-gpu-check-") as work:
            ours = trainer_rate(setup, strategy, images, labels, Path(work))
        bare = keras_rate(setup, strategy, images, labels)
        row = {"setup": name, "size": setup.size, "batch": setup.batch, "mixed_precision": setup.mixed_precision,
               "trainer_images_per_second": ours, "keras_images_per_second": bare,
               "ratio": ours / bare if bare else None}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def render(rows: list[dict]) -> str:
    header = f"{'setup':<26} {'px':>4} {'batch':>6} {'trainer img/s':>14} {'model.fit img/s':>16} {'ratio':>6}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['setup']:<26} {r['size']:>4} {r['batch']:>6} {r['trainer_images_per_second']:>14.1f} "
                     f"{r['keras_images_per_second']:>16.1f} {r['ratio']:>5.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes (32 px, batch 4, 2 steps an epoch) that run anywhere, the CPU included")
    parser.add_argument("--batch", type=int, default=0, help=f"global batch of the 1-GPU row (default {FULL.batch})")
    parser.add_argument("--steps", type=int, default=0, help=f"steps per epoch (default {FULL.steps})")
    parser.add_argument("--backbone", default="resnet50",
                        help="backbone name (default resnet50; the unit test's smoke run uses small_cnn to stay quick)")
    args = parser.parse_args(argv)
    if args.batch < 0 or args.steps < 0:
        parser.error("--batch and --steps must be positive")
    from classforge.v1 import common_pb2

    if f"BACKBONE_{args.backbone.upper()}" not in common_pb2.Backbone.keys() or args.backbone.lower() == "unspecified":
        choices = ", ".join(k[9:].lower() for k in common_pb2.Backbone.keys() if k != "BACKBONE_UNSPECIFIED")
        parser.error(f"--backbone {args.backbone!r} is not one of {choices}")
    plan = SMOKE if args.smoke else FULL
    plan = Plan(plan.size, args.batch or plan.batch, args.steps or plan.steps, plan.epochs, plan.mixed_precision,
                args.backbone.lower())
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    gpus = gpu_names()
    if not gpus and not args.smoke:
        print("no GPU: TensorFlow sees no GPU device on this machine (tf.config.list_logical_devices('GPU') is "
              "empty), so the GPU check did not run. Run it on a machine with an NVIDIA GPU and a CUDA build of "
              "TensorFlow, or pass --smoke to exercise the code path on the CPU.", file=sys.stderr)
        return NO_GPU_EXIT
    print(f"devices: {', '.join(gpus) or 'CPU only (smoke)'}; {plan.backbone} {plan.size}px, "
          f"global batch {plan.batch}, "
          f"{plan.steps} steps x {plan.epochs} epochs (first not counted), mixed precision "
          f"{'on' if plan.mixed_precision else 'off'}", flush=True)
    rows = measure(plan, gpus)
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
