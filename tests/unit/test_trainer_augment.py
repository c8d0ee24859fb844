"""Augmentations keep shapes and value ranges; the evaluation path is deterministic."""

import numpy as np
import pytest
import tensorflow as tf

from classforge.v1 import common_pb2
from services.common.preprocessing import decode_for_serving, preprocess_eval
from services.trainer import augment

EVERYTHING = common_pb2.Augmentation(
    crop_scale_min=0.2, crop_scale_max=1.0, crop_aspect_min=0.5, crop_aspect_max=2.0, box_jitter=0.2,
    horizontal_flip=True, brightness=0.5, contrast=0.5, saturation=0.5, hue=0.2, jpeg_quality_min=20,
    jpeg_quality_max=90, rescale_min=0.3, rescale_max=1.0)


@pytest.mark.parametrize("shape", [(17, 45, 3), (64, 64, 3), (8, 8, 3)])
def test_every_augmentation_keeps_shape_and_range(shape):
    rng = np.random.default_rng(0)
    image = tf.constant(rng.integers(0, 256, shape, dtype=np.uint8))
    fn = tf.function(lambda im: augment.augment(im, 32, EVERYTHING))
    for _ in range(8):
        out = fn(image).numpy()
        assert out.shape == (32, 32, 3) and out.dtype == np.float32
        assert out.min() >= -1.0 and out.max() <= 1.0
        assert np.isfinite(out).all()


def test_extremes_reach_the_ends_of_the_range_and_augmentation_is_random():
    black_white = np.zeros((32, 32, 3), np.uint8)
    black_white[:, 16:] = 255
    plain = augment.augment(tf.constant(black_white), 32, common_pb2.Augmentation()).numpy()
    assert plain.min() == pytest.approx(-1.0) and plain.max() == pytest.approx(1.0)
    outs = [augment.augment(tf.constant(black_white), 32, EVERYTHING).numpy() for _ in range(4)]
    assert any(not np.allclose(outs[0], o) for o in outs[1:])


def test_eval_preprocessing_is_deterministic_and_matches_serving_decode():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    a = preprocess_eval(tf.constant(image), 24).numpy()
    b = preprocess_eval(tf.constant(image), 24).numpy()
    np.testing.assert_array_equal(a, b)
    png = tf.io.encode_png(image)
    np.testing.assert_allclose(decode_for_serving(png, 24).numpy(), a, atol=1e-6)
    assert a.min() >= -1 and a.max() <= 1


def test_greyscale_becomes_rgb():
    grey = tf.zeros((10, 10, 1), tf.uint8)
    assert augment.to_rgb(grey).shape == (10, 10, 3)


def test_batch_photometric_draws_flip_and_colour_per_image():
    # One asymmetric image repeated: with per-image draws a batch of 64 holds both flipped and unflipped
    # copies and different brightness/contrast; one draw per batch would make all 64 identical.
    ramp = np.tile(np.linspace(0, 255, 16, dtype=np.float32)[None, :, None], (16, 1, 3))
    batch = tf.constant(np.repeat(ramp[None], 64, axis=0))
    flips = augment.augment_photometric(batch, common_pb2.Augmentation(horizontal_flip=True)).numpy()
    left_dark = flips[:, :, 0, 0].mean(axis=1) < flips[:, :, -1, 0].mean(axis=1)
    assert 0 < left_dark.sum() < 64
    unflipped = np.asarray(ramp / 127.5 - 1.0)
    for image, kept in zip(flips, left_dark, strict=True):
        np.testing.assert_allclose(image, unflipped if kept else unflipped[:, ::-1], atol=1e-6)
    colour = augment.augment_photometric(batch, EVERYTHING).numpy()
    assert colour.shape == (64, 16, 16, 3) and colour.min() >= -1.0 and colour.max() <= 1.0
    assert len({round(float(m), 4) for m in colour.mean(axis=(1, 2, 3))}) > 32


def test_one_image_augment_is_geometry_then_photometric():
    image = tf.constant(np.full((20, 30, 3), 200, np.uint8))
    geometry = augment.augment_geometry(image, 24, EVERYTHING)
    assert geometry.shape == (24, 24, 3)
    assert float(tf.reduce_min(geometry)) >= 0.0 and float(tf.reduce_max(geometry)) <= 255.0
    # With no photometric options the second half is only the normalisation to [-1, 1].
    plain = augment.augment_photometric(geometry[None], common_pb2.Augmentation()).numpy()[0]
    np.testing.assert_allclose(plain, geometry.numpy() / 127.5 - 1.0, atol=1e-6)
