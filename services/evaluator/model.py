"""Loading what the evaluator runs: the SavedModel through its serving signature (the contract in
services/common/serving_signature.py) and, for Grad-CAM, the whole Keras model the trainer exports
beside it (model.keras: loaded by keras alone, no trainer code)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from services.common import serving_signature as contract
from services.common.artefacts import KERAS_MODEL
from services.common.errors import FailedPrecondition
from services.common.preprocessing import decode_for_serving

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


@dataclass(frozen=True)
class CamModel:
    """What Grad-CAM runs on: the whole Keras model the trainer exported beside the SavedModel and how
    to preprocess one encoded image for it; or, without a model, why there is none (`missing`)."""

    model: object | None = None
    preprocess: Callable[[bytes], np.ndarray] | None = None
    missing: str = ""


def load_cam_model(model_dir: Path) -> CamModel:
    """The Keras model for Grad-CAM: `model.keras` next to `saved_model/` (the trainer's `models/<job>/`
    layout), loaded with keras alone. The preprocessing is the evaluation path
    (services/common/preprocessing.py) at the input size of `manifest.json`/`config.json`. A model
    without model.keras (exported before the trainer wrote it) or one that does not load gives a
    CamModel that says why; the evaluation goes on and the report shows the reason."""
    import keras

    root = Path(model_dir)
    path = root / KERAS_MODEL
    if not path.exists():
        reason = (f"no {KERAS_MODEL} beside the SavedModel (a model exported before the trainer wrote it; "
                  f"train it again for Grad-CAM): no Grad-CAM")
        log.warning("no Grad-CAM: the model has no Keras export", extra={"path": str(root), "reason": reason})
        return CamModel(missing=reason)
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 - a CAM problem is reported, the evaluation goes on
        log.warning("could not load the Keras model for Grad-CAM", extra={"path": str(path)}, exc_info=True)
        return CamModel(missing=f"{KERAS_MODEL} could not be loaded ({type(exc).__name__}: {exc}): no Grad-CAM")
    size = _input_size(root)
    if size is None:
        shape = model.inputs[0].shape
        size = shape[1] if shape[1] else 224

    def preprocess(encoded: bytes) -> np.ndarray:
        return decode_for_serving(tf.constant(encoded), size).numpy()

    return CamModel(model, preprocess)


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
