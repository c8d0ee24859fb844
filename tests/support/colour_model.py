"""Tiny models and images for the evaluator's tests and benchmark (no training, no download).

`write_colour_model` writes a SavedModel that follows services/common/serving_signature.py exactly: a
tf.Module whose `serving_default(image_bytes)` decodes (tf.io.decode_image, expand_animations=False),
resizes, runs one 3x3 convolution + global average pooling + a dense layer, and returns
`probabilities_<task>` (softmax) and `class_ids_<task>`; `assets/labels.json` is the label map. Its
weights are set by hand so that the predicted class is the image's dominant colour channel (class i
<-> channel i), which makes every prediction of a test predictable.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from services.common import serving_signature as contract

COLOURS = ("red", "green", "blue")


class ColourModel(tf.Module):
    def __init__(self, classes: list[str], task: str, size: int, sharpness: float, labels_path: str):
        super().__init__()
        n = len(classes)
        kernel = np.zeros((3, 3, 3, 3), np.float32)
        kernel[1, 1] = np.eye(3)  # centre tap: each channel passes through
        self.kernel = tf.Variable(kernel, name="conv_kernel")
        dense = np.zeros((3, n), np.float32)
        for i in range(n):
            dense[i % 3, i] = sharpness
        self.dense = tf.Variable(dense, name="dense_kernel")
        self.bias = tf.Variable(np.zeros(n, np.float32), name="dense_bias")
        self.task, self.size = task, size
        self.labels = tf.saved_model.Asset(labels_path)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=contract.INPUT_KEY)])
    def serve(self, image_bytes):
        def decode(b):
            image = tf.io.decode_image(b, channels=3, expand_animations=False)
            image.set_shape([None, None, 3])
            return tf.image.resize(tf.cast(image, tf.float32), [self.size, self.size]) / 127.5 - 1.0

        images = tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec([self.size, self.size, 3]))
        features = tf.nn.relu(tf.nn.conv2d(images + 1.0, self.kernel, 1, "SAME"))
        pooled = tf.reduce_mean(features, axis=[1, 2])
        probabilities = tf.nn.softmax(tf.matmul(pooled, self.dense) + self.bias)
        return {contract.probabilities_key(self.task): probabilities,
                contract.class_ids_key(self.task): tf.argmax(probabilities, axis=-1)}


def write_colour_model(path: str | Path, classes: list[str] | None = None, task: str = "label", size: int = 16,
                       sharpness: float = 4.0) -> Path:
    """Writes the SavedModel to `path`; returns it."""
    classes = list(classes or COLOURS)
    path = Path(path)
    with tempfile.TemporaryDirectory() as scratch:
        labels = Path(scratch) / contract.LABELS_ASSET
        labels.write_text(json.dumps({"tasks": [{"name": task, "classes": classes}]}))
        module = ColourModel(classes, task, size, sharpness, str(labels))
        tf.saved_model.save(module, str(path), signatures={contract.SIGNATURE_NAME: module.serve})
    return path


def colour_image(channel: int, strength: float = 1.0, size: int = 16, seed: int = 0, fmt: str = "PNG") -> bytes:
    """An image whose dominant channel is `channel` (strength 0..1 of the lead), with a little noise."""
    rng = np.random.default_rng(seed)
    pixels = rng.uniform(40, 90, (size, size, 3))
    pixels[..., channel] += 100 * strength
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


class ColourRecords:
    """Stands in for the evaluation split of a records build (services.evaluator.records): `count`
    colour images, class i % 3, every tenth one labelled with the next class (a wrong label), so a
    colour model scores 0.9. Same constructor as EvaluationRecords; counts how often it was opened.
    `dhash`: the examples carry their difference hash, as records built from a dataset with hashes.tsv
    do; False: as records of a dataset made before (the evaluator hashes the images itself)."""

    opened = 0

    def __init__(self, store=None, uri: str = "records/colours", cache_dir=None, batch_size: int = 64,
                 count: int = 30, classes: list[str] | None = None, size: int = 16, dhash: bool = True):
        from services.common.image_hash import dhash as image_dhash
        from services.evaluator.engine import Example

        ColourRecords.opened += 1
        classes = list(classes or COLOURS)
        self.uri, self.split, self.tasks = str(uri), "test", [{"name": "label", "classes": classes}]
        self._examples = []
        for i in range(count):
            data = colour_image(i % 3, 0.5, size=size, seed=i)
            label = i % 3 if i % 10 else (i + 1) % 3
            self._examples.append(Example(data, (label,), hashlib.sha256(data).hexdigest(), f"{i}.png",
                                          image_dhash(data) if dhash else None))

    def examples(self):
        return iter(self._examples)

    def identity(self) -> dict:
        return {"uri": self.uri, "split": self.split, "examples": len(self._examples)}
