"""The contract of an exported classforge model, shared by the trainer (which writes it), the
evaluator and the inference service (which call it) and the model server.

A SavedModel's `serving_default` signature takes a batch of encoded images and returns, per task,
the class probabilities and the top class id. Decoding, resizing and normalisation live inside the
graph, so serving can never drift from training. The label map ships as an asset.

    inputs:  image_bytes            tf.string [batch]     JPEG/PNG/BMP/GIF/WebP bytes
    outputs: probabilities_<task>   tf.float32 [batch, classes]
             class_ids_<task>       tf.int64   [batch]
    assets:  labels.json            {"tasks": [{"name": ..., "classes": [...]}, ...]}

The input name follows TF Serving's REST convention: a key ending in `_bytes` carries base64.
"""

from __future__ import annotations

SIGNATURE_NAME = "serving_default"
INPUT_KEY = "image_bytes"
LABELS_ASSET = "labels.json"
PROBABILITIES_PREFIX = "probabilities_"
CLASS_IDS_PREFIX = "class_ids_"


def probabilities_key(task: str) -> str:
    return f"{PROBABILITIES_PREFIX}{task}"


def class_ids_key(task: str) -> str:
    return f"{CLASS_IDS_PREFIX}{task}"


def tasks_in(output_keys) -> list[str]:
    """Task names present in a signature's output keys, in sorted order."""
    return sorted(k[len(PROBABILITIES_PREFIX):] for k in output_keys if k.startswith(PROBABILITIES_PREFIX))
