"""Every backbone builds and takes one training step at a small size; options change the network."""

import numpy as np
import pytest
import tensorflow as tf

from classforge.v1 import common_pb2
from services.trainer.backbones import Task, build_network, decay_variables
from services.trainer.config import with_defaults

B = common_pb2.Backbone
TASKS = (Task("label", ("a", "b", "c")), Task("size", ("s", "m", "l", "x")))


def _one_step(config: common_pb2.TrainingConfig, size: int) -> None:
    network = build_network(config, TASKS)
    model = network.model
    optimizer = tf.keras.optimizers.SGD(0.01)
    images = tf.random.uniform((2, size, size, 3), -1, 1)
    before = [v.numpy().copy() for v in model.trainable_variables[:3]]
    with tf.GradientTape() as tape:
        outputs = model(images, training=True)
        loss = sum(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits([0, 1], outputs[t.name]))
                   for t in TASKS)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    assert outputs["label"].shape == (2, 3) and outputs["size"].shape == (2, 4)
    assert outputs["label"].dtype == tf.float32
    assert np.isfinite(float(loss))
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables[:3], strict=True))
    assert decay_variables(model)


@pytest.mark.parametrize("backbone, size", [
    (B.BACKBONE_SMALL_CNN, 28), (B.BACKBONE_RESNET18, 28), (B.BACKBONE_RESNET34, 32),
    (B.BACKBONE_MOBILENET_V2, 32), (B.BACKBONE_EFFICIENTNET_B0, 32), (B.BACKBONE_RESNET50, 32),
    (B.BACKBONE_RESNET101, 32)])
def test_backbone_builds_and_trains_one_step(backbone, size):
    _one_step(with_defaults(common_pb2.TrainingConfig(backbone=backbone, input_size=size)), size)


def test_options_group_norm_se_stem_and_width():
    plain = build_network(with_defaults(common_pb2.TrainingConfig(input_size=96)), TASKS).backbone
    options = with_defaults(common_pb2.TrainingConfig(input_size=32, group_norm=True, squeeze_excitation=True,
                                                      width_multiplier=0.25))
    network = build_network(options, TASKS)
    kinds = {type(layer).__name__ for layer in network.backbone.layers}
    assert "GroupNormalization" in kinds and "BatchNormalization" not in kinds
    assert any(layer.name.startswith("se_scale") for layer in network.backbone.layers)
    assert network.backbone.output.shape[-1] == 128  # 512 * 0.25
    # Large-image stem downsamples by 4 (7x7/2 + max-pool); the small stem keeps full resolution.
    assert any(layer.name.startswith("pool") for layer in plain.layers)
    assert not any(layer.name.startswith("pool") for layer in network.backbone.layers)
    _one_step(options, 32)


def test_mixed_precision_keeps_float32_heads_and_restores_the_policy():
    config = with_defaults(common_pb2.TrainingConfig(backbone=B.BACKBONE_SMALL_CNN, input_size=32,
                                                     mixed_precision=True))
    network = build_network(config, TASKS)
    assert network.backbone.layers[1].dtype_policy.compute_dtype == "float16"
    assert network.model.get_layer("head_label").dtype_policy.compute_dtype == "float32"
    assert tf.keras.config.dtype_policy().name == "float32"
