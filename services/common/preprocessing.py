"""The evaluation preprocessing of a classforge model, as TensorFlow ops: one definition for the
trainer's validation pipeline, the serving graph it exports and the evaluator's Grad-CAM input, so
that a model is always shown images the way it saw them in validation.

One uint8 image [H, W, 3] of any size (or its encoded bytes) -> float32 [size, size, 3] in [-1, 1].
The trainer's random training path (services/trainer/augment.py) ends in the same range.
"""

from __future__ import annotations

import tensorflow as tf


def preprocess_eval(image: tf.Tensor, size: int) -> tf.Tensor:
    """The deterministic path (validation, test, serving): resize the whole image, normalise."""
    image = tf.image.resize(tf.cast(image, tf.float32), [size, size], method="bilinear")
    return tf.clip_by_value(image / 127.5 - 1.0, -1.0, 1.0)


def decode_for_serving(encoded: tf.Tensor, size: int) -> tf.Tensor:
    """One encoded image (JPEG/PNG/GIF/BMP bytes) -> float32 [size, size, 3] in [-1, 1]."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return preprocess_eval(image, size)
