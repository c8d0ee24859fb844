"""Loading what the evaluator runs: the SavedModel through its serving signature (the contract in
services/common/serving_signature.py) and, for Grad-CAM, the Keras model behind it."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from services.common import serving_signature as contract
from services.common.errors import FailedPrecondition

log = logging.getLogger("classforge.evaluator")


class ServingModel:
    """A SavedModel called the way TF Serving calls it: `serving_default(image_bytes=...)`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            loaded = tf.saved_model.load(str(self.path))
        except (OSError, ValueError, tf.errors.OpError) as exc:
            raise FailedPrecondition(f"{self.path} is not a loadable SavedModel: {exc}") from exc
        self._loaded = loaded  # keeps the variables alive
        if contract.SIGNATURE_NAME not in loaded.signatures:
            raise FailedPrecondition(f"SavedModel {self.path} has no {contract.SIGNATURE_NAME!r} signature "
                                     f"(has {sorted(loaded.signatures)})")
        self.fn = loaded.signatures[contract.SIGNATURE_NAME]
        inputs = self.fn.structured_input_signature[1]
        if contract.INPUT_KEY not in inputs:
            raise FailedPrecondition(f"the serving signature of {self.path} takes {sorted(inputs)}, not "
                                     f"{contract.INPUT_KEY!r} (see services/common/serving_signature.py)")
        outputs = list(self.fn.structured_outputs)
        self.tasks = contract.tasks_in(outputs)
        missing = [contract.class_ids_key(t) for t in self.tasks if contract.class_ids_key(t) not in outputs]
        if not self.tasks or missing:
            raise FailedPrecondition(
                f"the serving signature of {self.path} returns {sorted(outputs)}; the contract wants "
                f"'{contract.PROBABILITIES_PREFIX}<task>' and '{contract.CLASS_IDS_PREFIX}<task>' for every task "
                f"(services/common/serving_signature.py)")
        self.label_map = _read_labels(self.path)
        classes = {t["name"]: list(t["classes"]) for t in self.label_map.get("tasks", [])}
        unknown = [t for t in self.tasks if t not in classes]
        if unknown:
            raise FailedPrecondition(f"assets/{contract.LABELS_ASSET} of {self.path} names no classes for "
                                     f"task(s) {unknown}")
        self.classes: dict[str, list[str]] = {t: classes[t] for t in self.tasks}

    def __call__(self, encoded: list[bytes]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{task: (probabilities float [n, C], class ids int64 [n])}"""
        out = self.fn(**{contract.INPUT_KEY: tf.constant(encoded, dtype=tf.string)})
        result = {}
        for task in self.tasks:
            probabilities = out[contract.probabilities_key(task)].numpy()
            if probabilities.shape[-1] != len(self.classes[task]):
                raise FailedPrecondition(f"task {task!r}: the model returns {probabilities.shape[-1]} probabilities "
                                         f"but its labels.json lists {len(self.classes[task])} classes")
            result[task] = (probabilities, out[contract.class_ids_key(task)].numpy())
        return result


def _read_labels(path: Path) -> dict:
    asset = path / "assets" / contract.LABELS_ASSET
    try:
        return json.loads(asset.read_text())
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(f"SavedModel {path} has no readable assets/{contract.LABELS_ASSET}: {exc}") from exc


def load_keras_model(model_dir: Path) -> tuple[object, Callable[[bytes], np.ndarray]] | None:
    """The Keras model behind a SavedModel, for Grad-CAM, and how to preprocess one encoded image for it.

    Looked for next to `saved_model/` (the trainer's `models/<job>/` layout): `model.keras` (a whole
    model, preferred: needs no trainer code), else `config.json` + `labels.json` + `model.weights.h5`,
    rebuilt with the trainer's own network builder. The preprocessing is the trainer's evaluation path
    (augment.decode_for_serving) at the input size of `manifest.json`/`config.json`, else decode,
    resize, scale to [-1, 1]. None when no Keras model is there (the report then says CAMs are missing)."""
    import keras

    from services.evaluator.cam import default_preprocess

    root = Path(model_dir)
    size = _input_size(root)
    model = None
    try:
        if (root / "model.keras").exists():
            model = keras.models.load_model(root / "model.keras", compile=False)
        elif all((root / name).exists() for name in ("config.json", "labels.json", "model.weights.h5")):
            model = _rebuild_trainer_network(root)
    except Exception:  # noqa: BLE001 - a CAM problem must not fail the evaluation
        log.warning("could not load the Keras model for Grad-CAM", extra={"path": str(root)}, exc_info=True)
        return None
    if model is None:
        return None
    if size is None:
        shape = model.inputs[0].shape
        size = shape[1] if shape[1] else 224
    try:
        from services.trainer import augment

        def preprocess(encoded: bytes) -> np.ndarray:
            return augment.decode_for_serving(tf.constant(encoded), size).numpy()
    except ImportError:
        preprocess = default_preprocess((size, size))
    return model, preprocess


def _input_size(root: Path) -> int | None:
    for name in ("manifest.json", "config.json"):
        try:
            value = json.loads((root / name).read_text())
        except (OSError, ValueError):
            continue
        size = value.get("input_size") or value.get("inputSize")
        if size:
            return int(size)
    return None


def _rebuild_trainer_network(root: Path):
    from google.protobuf import json_format

    from classforge.v1 import common_pb2
    from services.trainer.backbones import build_network
    from services.trainer.config import with_defaults
    from services.trainer.data import tasks_from_labels

    config = with_defaults(json_format.Parse((root / "config.json").read_text(), common_pb2.TrainingConfig(),
                                             ignore_unknown_fields=True))
    tasks = tasks_from_labels(json.loads((root / "labels.json").read_text()), config)
    network = build_network(config, tasks)
    network.model.load_weights(root / "model.weights.h5")
    return network.model
