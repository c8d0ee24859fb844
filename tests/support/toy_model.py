"""A tiny SavedModel that follows the serving contract (services/common/serving_signature.py), for
tests, benchmarks and smoke runs of the model server: it decodes the image bytes in the graph
(tf.io.decode_image, expand_animations=False), resizes to SIZE×SIZE, scales to [-1, 1] and applies a
fixed linear layer + softmax per task. Different seeds give different weights, so a caller can tell
which version answered.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np

from services.common import serving_signature as contract

SIZE = 8
DEFAULT_TASKS = {"label": ["cat", "dog", "bird"], "color": ["dark", "light"]}


def build(export_dir: str | Path, seed: int, tasks: dict[str, list[str]] | None = None, *, size: int = SIZE,
          conv_channels: int = 0) -> Path:
    """Writes the SavedModel to export_dir (created) and returns it. `size` and `conv_channels` (two 3×3
    convolutions of that width before the heads) make it slower, like a real CNN (benchmarks)."""
    import tensorflow as tf

    tasks = tasks or DEFAULT_TASKS
    rng = np.random.default_rng(seed)
    pixels = size * size * 3
    features = conv_channels or pixels
    kernels = [rng.normal(0, 0.2, (3, 3, 3, conv_channels)).astype(np.float32),
               rng.normal(0, 0.1, (3, 3, conv_channels, conv_channels)).astype(np.float32)] if conv_channels else []

    class Toy(tf.Module):
        def __init__(self):
            super().__init__()
            self.heads = {
                task: (tf.Variable(rng.normal(0, 0.5, (features, len(classes))).astype(np.float32), name=f"w_{task}"),
                       tf.Variable(rng.normal(0, 0.1, (len(classes),)).astype(np.float32), name=f"b_{task}"))
                for task, classes in tasks.items()}
            self.labels = tf.saved_model.Asset(str(labels_path))
            self.kernels = [tf.Variable(k, name=f"conv{i}") for i, k in enumerate(kernels)]

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=contract.INPUT_KEY)])
        def serve(self, image_bytes):
            def one(data):
                image = tf.io.decode_image(data, channels=3, expand_animations=False)
                image = tf.image.resize(tf.cast(image, tf.float32), [size, size])
                return image / 127.5 - 1.0

            x = tf.map_fn(one, image_bytes, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
            for kernel in self.kernels:
                x = tf.nn.relu(tf.nn.conv2d(x, kernel, strides=1, padding="SAME"))
            x = tf.reduce_mean(x, axis=[1, 2]) if self.kernels else tf.reshape(x, [-1, pixels])
            outputs = {}
            for task, (weights, bias) in self.heads.items():
                probabilities = tf.nn.softmax(tf.matmul(x, weights) + bias)
                outputs[contract.probabilities_key(task)] = probabilities
                outputs[contract.class_ids_key(task)] = tf.argmax(probabilities, axis=1, output_type=tf.int64)
            return outputs

    export_dir = Path(export_dir)
    with tempfile.TemporaryDirectory() as assets:
        labels_path = Path(assets) / contract.LABELS_ASSET
        labels_path.write_text(json.dumps({"tasks": [{"name": t, "classes": c} for t, c in tasks.items()]}))
        module = Toy()
        tf.saved_model.save(module, str(export_dir), signatures={contract.SIGNATURE_NAME: module.serve})
    return export_dir


def png(width: int, height: int, seed: int) -> bytes:
    """A random RGB PNG image (test input)."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def jpeg(width: int, height: int, seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()
