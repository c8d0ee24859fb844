"""Image preprocessing as TensorFlow ops, for use inside tf.data `map` (training) and inside the
exported serving graph (evaluation/serving), so both sides share one definition.

Every function takes one uint8 image [H, W, 3] of any size and returns float32 [size, size, 3] in
[-1, 1]. Training order: random resized crop with box jitter (one resampling) -> random rescale
(down then up) -> JPEG re-compression -> horizontal flip -> brightness/contrast/saturation/hue ->
normalise.
"""

from __future__ import annotations

import tensorflow as tf

from classforge.v1 import common_pb2


def normalize(image: tf.Tensor) -> tf.Tensor:
    """uint8 (or float 0..255) -> float32 in [-1, 1]."""
    return tf.cast(image, tf.float32) / 127.5 - 1.0


def to_rgb(image: tf.Tensor) -> tf.Tensor:
    """[H, W, 1|3] -> [H, W, 3] (the channel count must be known when the graph is built)."""
    channels = image.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    if channels != 3:
        raise ValueError(f"expected 1 or 3 channels, got {channels}")
    return image


def preprocess_eval(image: tf.Tensor, size: int) -> tf.Tensor:
    """The deterministic path (validation, test, serving): resize the whole image, normalise."""
    image = tf.image.resize(tf.cast(image, tf.float32), [size, size], method="bilinear")
    return tf.clip_by_value(image / 127.5 - 1.0, -1.0, 1.0)


def decode_for_serving(encoded: tf.Tensor, size: int) -> tf.Tensor:
    """One encoded image (JPEG/PNG/GIF/BMP bytes) -> float32 [size, size, 3] in [-1, 1]."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return preprocess_eval(image, size)


def _crop_box(shape: tf.Tensor, aug: common_pb2.Augmentation) -> tf.Tensor:
    """Normalised [y0, x0, y1, x1] of a random resized crop, its edges jittered."""
    if aug.crop_scale_min > 0:
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            shape, bounding_boxes=tf.zeros([1, 0, 4]), min_object_covered=0.0,
            aspect_ratio_range=(aug.crop_aspect_min, aug.crop_aspect_max),
            area_range=(aug.crop_scale_min, aug.crop_scale_max), max_attempts=10,
            use_image_if_no_bounding_boxes=True)
        h = tf.cast(shape[0], tf.float32)
        w = tf.cast(shape[1], tf.float32)
        y0, x0 = tf.cast(begin[0], tf.float32) / h, tf.cast(begin[1], tf.float32) / w
        box = tf.stack([y0, x0, y0 + tf.cast(size[0], tf.float32) / h, x0 + tf.cast(size[1], tf.float32) / w])
    else:
        box = tf.constant([0.0, 0.0, 1.0, 1.0])
    if aug.box_jitter > 0:
        side = tf.stack([box[2] - box[0], box[3] - box[1]] * 2)
        box = box + tf.random.uniform([4], -aug.box_jitter, aug.box_jitter) * side
    return box


def augment(image: tf.Tensor, size: int | tf.Tensor, aug: common_pb2.Augmentation) -> tf.Tensor:
    """The random training path. `image` uint8 [H, W, 3]; returns float32 [size, size, 3] in [-1, 1]."""
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    box = _crop_box(shape, aug)
    # One resampling for crop + jitter + resize; area outside the image (jitter) is mid-grey.
    out = tf.image.crop_and_resize(tf.cast(image, tf.float32)[None], box[None], [0], [size, size],
                                   extrapolation_value=127.5)[0]
    if aug.rescale_min > 0:
        factor = tf.random.uniform([], aug.rescale_min, aug.rescale_max)
        small = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * factor), tf.int32), 1)
        out = tf.image.resize(tf.image.resize(out, [small, small]), [size, size])
    out = tf.clip_by_value(out, 0.0, 255.0)
    if aug.jpeg_quality_min > 0:
        as_uint8 = tf.cast(tf.round(out), tf.uint8)
        out = tf.cast(tf.image.random_jpeg_quality(as_uint8, aug.jpeg_quality_min, aug.jpeg_quality_max),
                      tf.float32)
        out = tf.reshape(out, [size, size, 3])
    if aug.horizontal_flip:
        out = tf.image.random_flip_left_right(out)
    out = out / 255.0
    if aug.brightness > 0:
        out = tf.image.random_brightness(out, aug.brightness)
    if aug.contrast > 0:
        out = tf.image.random_contrast(out, 1.0 - aug.contrast, 1.0 + aug.contrast)
    if aug.saturation > 0:
        out = tf.image.random_saturation(out, max(0.0, 1.0 - aug.saturation), 1.0 + aug.saturation)
    if aug.hue > 0:
        out = tf.image.random_hue(out, aug.hue)
    out = tf.clip_by_value(out, 0.0, 1.0)
    return out * 2.0 - 1.0
