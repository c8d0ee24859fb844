"""The random training augmentation as TensorFlow ops, for use inside tf.data `map`. The deterministic
evaluation path (validation, the serving graph, Grad-CAM) is services/common/preprocessing.py, shared
with the evaluator; both end in float32 [size, size, 3] in [-1, 1].

The random training path is two halves, because images of different sizes can only be batched once
they have the same size:
- `augment_geometry`, per image: random resized crop with box jitter (one resampling) -> random
  rescale (down then up) -> JPEG re-compression; float32 [size, size, 3] in 0..255;
- `augment_photometric`, per batch (one set of ops for the whole batch, each image with its own random
  parameters; far cheaper than per-image ops on small images): horizontal flip ->
  brightness/contrast/saturation/hue -> normalise to [-1, 1].
`augment` is the two halves for one image.
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


def augment_geometry(image: tf.Tensor, size: int | tf.Tensor, aug: common_pb2.Augmentation) -> tf.Tensor:
    """Per image: uint8 [H, W, 3] -> float32 [size, size, 3] in 0..255 (crop, jitter, rescale, JPEG)."""
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
    return out


def augment_photometric(images: tf.Tensor, aug: common_pb2.Augmentation) -> tf.Tensor:
    """Per batch: float32 [N, S, S, 3] in 0..255 -> [-1, 1]; flip and colour drawn per image."""
    n = tf.shape(images)[0]

    def per_image(low: float, high: float) -> tf.Tensor:
        return tf.random.uniform([n, 1, 1, 1], low, high)

    out = images / 255.0
    if aug.horizontal_flip:
        out = tf.where(per_image(0.0, 1.0) < 0.5, tf.reverse(out, axis=[2]), out)
    if aug.brightness > 0:
        out = out + per_image(-aug.brightness, aug.brightness)
    if aug.contrast > 0:  # as tf.image.adjust_contrast: scale about each image's per-channel mean
        mean = tf.reduce_mean(out, axis=[1, 2], keepdims=True)
        out = (out - mean) * per_image(1.0 - aug.contrast, 1.0 + aug.contrast) + mean
    if aug.saturation > 0 or aug.hue > 0:  # as tf.image.adjust_saturation / adjust_hue, in HSV
        hue, saturation, value = tf.unstack(tf.image.rgb_to_hsv(tf.clip_by_value(out, 0.0, 1.0)), axis=-1)
        if aug.hue > 0:
            hue = tf.math.floormod(hue + per_image(-aug.hue, aug.hue)[..., 0], 1.0)
        if aug.saturation > 0:
            factor = per_image(max(0.0, 1.0 - aug.saturation), 1.0 + aug.saturation)[..., 0]
            saturation = tf.clip_by_value(saturation * factor, 0.0, 1.0)
        out = tf.image.hsv_to_rgb(tf.stack([hue, saturation, value], axis=-1))
    out = tf.clip_by_value(out, 0.0, 1.0)
    return out * 2.0 - 1.0


def augment(image: tf.Tensor, size: int | tf.Tensor, aug: common_pb2.Augmentation) -> tf.Tensor:
    """The random training path for one image: uint8 [H, W, 3] -> float32 [size, size, 3] in [-1, 1]."""
    return augment_photometric(augment_geometry(image, size, aug)[None], aug)[0]
