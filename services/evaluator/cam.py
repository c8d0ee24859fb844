"""Grad-CAM (Selvaraju et al., 2017) over the last convolutional feature map of any Keras
functional model, overlaid on the image.

- The feature map: the last layer of the model (in graph order) whose output is 4-D
  [batch, height, width, channels]. A backbone nested as one layer (a keras.applications model used
  inside the classifier) is itself that layer: its output is its last feature map.
- The class score: the logit (pre-softmax) of the class. Outputs that come from a softmax (a
  Softmax/Activation layer, or a Dense layer with a softmax activation) are taken before it; other
  outputs are used as they are (the trainer's heads are logits), except that rows that look like
  probabilities get a log. Softmax saturates: on a confident prediction the gradient of the probability itself all
  but vanishes, the gradient of the logit does not.
- CAM = ReLU(sum_k alpha_k * A_k) with alpha_k the spatial mean of d score / d A_k; scaled to [0, 1]
  by its maximum; all zeros when nothing in the image speaks for the class.
- The map is computed at the model's input size and resized (bilinear) to the original image, then
  blended with a "jet" colour map: the overlay PNG has exactly the image's size.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext

import keras
import matplotlib
import numpy as np
import tensorflow as tf
from PIL import Image

from services.evaluator.images import decode

ALPHA = 0.45


def _is_feature_map(layer: keras.layers.Layer) -> bool:
    if isinstance(layer, keras.layers.InputLayer):
        return False
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):  # a layer used several times, or never called
        return False
    return len(shape) == 4 and not (shape[1] == 1 and shape[2] == 1)  # not a squeeze-excite pool


def last_conv_layer(model: keras.Model) -> keras.layers.Layer:
    """The last layer, in graph order and looking inside nested models (a backbone used as one
    layer), whose output is a 4-D feature map [batch, height, width, channels] (a 1x1 pooled map, as
    squeeze-and-excitation makes, does not count)."""
    def search(m: keras.Model):
        for layer in reversed(m.layers):
            if isinstance(layer, keras.Model):
                found = search(layer)
                if found is not None:
                    return found
            elif _is_feature_map(layer):
                return layer
        return None

    found = search(model)
    if found is None:
        raise ValueError(f"model {model.name!r} has no layer with a 4-D output: Grad-CAM needs a convolutional "
                         f"feature map")
    return found


def _output_key(model: keras.Model, task: str | None, task_index: int):
    """Which output of the model holds the task: a dict key, a list index, or None (single output)."""
    if isinstance(model.output, dict):
        names = [k for k in model.output if k != "embedding"]
        return task if task in model.output else names[task_index]
    if len(model.outputs) == 1:
        return None
    if task is not None:
        for i, tensor in enumerate(model.outputs):
            if task in tensor._keras_history.operation.name:
                return i
    return task_index


def _softmax_layer(model: keras.Model, key) -> keras.layers.Layer | None:
    """The layer that applies the softmax to the task's output, if one does."""
    tensor = model.outputs[0] if key is None else (model.output[key] if isinstance(key, str) else model.outputs[key])
    op = tensor._keras_history.operation
    name = getattr(getattr(op, "activation", None), "__name__", "")
    if isinstance(op, keras.layers.Softmax) or (isinstance(op, keras.layers.Activation | keras.layers.Dense)
                                                 and name == "softmax"):
        return op
    return None


@contextmanager
def _replaced(obj, name: str, value):
    """Sets an instance attribute for the duration of the block; the class's one shows again after."""
    had = name in obj.__dict__
    before = obj.__dict__.get(name)
    object.__setattr__(obj, name, value)
    try:
        yield
    finally:
        if had:
            object.__setattr__(obj, name, before)
        else:
            object.__delattr__(obj, name)


class GradCam:
    """Grad-CAM for one model (and one task of a multi-task model); build once, call per batch.

    The feature map is caught during an ordinary forward pass: the feature layer's `call` is wrapped
    for the duration of the pass (recording its output and watching it on the gradient tape), so the
    layer may sit at any depth of nested models and in any graph shape, with no rebuilt model."""

    def __init__(self, model: keras.Model, task: str | None = None, task_index: int = 0,
                 layer: str | None = None):
        self.model = model
        self.layer = model.get_layer(layer) if layer else last_conv_layer(model)
        self._key = _output_key(model, task, task_index)
        self._softmax = _softmax_layer(model, self._key)
        self._lock = threading.Lock()  # the wrapping is per layer instance: one pass at a time

    def _logits_pass(self):
        """While active, the softmax layer of the output (if any) passes its input through."""
        op = self._softmax
        if op is None:
            return nullcontext()
        if isinstance(op, keras.layers.Dense):
            return _replaced(op, "activation", keras.activations.linear)
        return _replaced(op, "call", lambda inputs, *args, **kwargs: inputs)

    def heatmaps(self, batch: np.ndarray, class_ids: Sequence[int]) -> np.ndarray:
        """batch float [B, H, W, C] already preprocessed for the model -> CAMs [B, h, w] in [0, 1]
        at the feature map's resolution."""
        x = tf.convert_to_tensor(batch, tf.float32)
        ids = tf.constant(list(class_ids), tf.int32)
        caught: list[tf.Tensor] = []
        original = self.layer.call

        with self._lock, tf.GradientTape() as tape:
            def catching(*args, **kwargs):
                out = original(*args, **kwargs)
                tape.watch(out)
                caught.append(out)
                return out

            with _replaced(self.layer, "call", catching), self._logits_pass():
                outputs = self.model(x, training=False)
            if isinstance(outputs, dict):
                scores = outputs[self._key]
            elif isinstance(outputs, list | tuple):
                scores = outputs[self._key or 0]
            else:
                scores = outputs
            if self._softmax is None and _looks_like_probabilities(scores):
                scores = tf.math.log(tf.maximum(scores, 1e-12))
            picked = tf.gather(tf.cast(scores, tf.float32), ids, axis=1, batch_dims=1)
        if not caught:
            raise RuntimeError(f"layer {self.layer.name!r} was not called in the forward pass")
        features = caught[-1]
        grads = tape.gradient(picked, features)
        features, grads = tf.cast(features, tf.float32), tf.cast(grads, tf.float32)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cams = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1)).numpy()
        peaks = cams.reshape(len(cams), -1).max(axis=1)
        return np.divide(cams, peaks[:, None, None], out=np.zeros_like(cams), where=peaks[:, None, None] > 0)


def _looks_like_probabilities(scores: tf.Tensor) -> bool:
    """An output whose rows are non-negative and sum to 1 is probabilities (log taken), else logits."""
    values = scores.numpy()
    return bool(values.min() >= 0 and np.allclose(values.sum(axis=1), 1.0, atol=1e-3))


def upsample(cam: np.ndarray, width: int, height: int) -> np.ndarray:
    """A CAM resized (bilinear) to width x height, values in [0, 1]."""
    resized = Image.fromarray(cam.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized), 0.0, 1.0)


def overlay(encoded: bytes, cam: np.ndarray, alpha: float = ALPHA) -> tuple[Image.Image, np.ndarray]:
    """(the image blended with the coloured CAM, the CAM at the image's size)."""
    image = decode(encoded)
    full = upsample(cam, image.width, image.height)
    colours = matplotlib.colormaps["jet"](full)[..., :3] * 255.0
    blended = (1 - alpha) * np.asarray(image, dtype=np.float32) + alpha * colours
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8), mode="RGB"), full
