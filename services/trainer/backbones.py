"""Backbones and the classification model.

Project-written: ResNet18/34 (basic blocks), SMALL_CNN (four stages of two 3x3 convolutions), with
options: squeeze-and-excitation, GroupNorm instead of BatchNorm, a small-input stem (3x3 stride 1,
no max-pool: for 28-64 px images) and a width multiplier. From keras.applications (weights=None,
nothing is downloaded): ResNet50/101, MobileNetV2, EfficientNetB0.

Every backbone maps a float image batch in [-1, 1] of any spatial size to a pooled embedding.
`build_model` puts one head per task on top: a Dense softmax head (logits) for a classification task,
a Dense(1) head for a regression task. Heads are float32 even under mixed precision.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import keras
from keras import layers

from classforge.v1 import common_pb2

Backbone = common_pb2.Backbone


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[str, ...]
    regression: bool = False
    weight: float = 1.0

    @property
    def num_outputs(self) -> int:
        return 1 if self.regression else len(self.classes)


@dataclass
class Network:
    """The trained model (outputs: {task: logits|value, "embedding": …}) and its backbone part."""

    model: keras.Model
    backbone: keras.Model
    tasks: tuple[Task, ...]


def _groups(channels: int) -> int:
    g = math.gcd(channels, 32)
    while g > 1 and channels // g < 4:
        g //= 2
    return g


class _Builder:
    def __init__(self, group_norm: bool, se: bool):
        self.group_norm, self.se = group_norm, se
        self.count = 0

    def name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}_{self.count}"

    def norm(self, x, channels: int):
        if self.group_norm:
            return layers.GroupNormalization(groups=_groups(channels), epsilon=1e-5, name=self.name("gn"))(x)
        return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=self.name("bn"))(x)

    def conv(self, x, channels: int, kernel: int = 3, stride: int = 1):
        return layers.Conv2D(channels, kernel, strides=stride, padding="same", use_bias=False,
                             kernel_initializer="he_normal", name=self.name("conv"))(x)

    def squeeze_excite(self, x, channels: int, ratio: int = 16):
        if not self.se:
            return x
        s = layers.GlobalAveragePooling2D(keepdims=True, name=self.name("se_pool"))(x)
        s = layers.Conv2D(max(channels // ratio, 4), 1, activation="relu", name=self.name("se_reduce"))(s)
        s = layers.Conv2D(channels, 1, activation="sigmoid", name=self.name("se_expand"))(s)
        return layers.Multiply(name=self.name("se_scale"))([x, s])

    def basic_block(self, x, channels: int, stride: int):
        shortcut = x
        y = self.conv(x, channels, 3, stride)
        y = layers.ReLU(name=self.name("relu"))(self.norm(y, channels))
        y = self.norm(self.conv(y, channels, 3, 1), channels)
        y = self.squeeze_excite(y, channels)
        if stride != 1 or x.shape[-1] != channels:
            shortcut = self.norm(self.conv(x, channels, 1, stride), channels)
        return layers.ReLU(name=self.name("relu"))(layers.Add(name=self.name("add"))([y, shortcut]))


def _resnet(inputs, blocks: tuple[int, ...], config: common_pb2.TrainingConfig):
    b = _Builder(config.group_norm, config.squeeze_excitation)
    widths = [max(8, int(round(c * config.width_multiplier))) for c in (64, 128, 256, 512)]
    if config.small_input_stem:
        x = layers.ReLU(name=b.name("relu"))(b.norm(b.conv(inputs, widths[0], 3, 1), widths[0]))
    else:
        x = layers.ReLU(name=b.name("relu"))(b.norm(b.conv(inputs, widths[0], 7, 2), widths[0]))
        x = layers.MaxPooling2D(3, strides=2, padding="same", name=b.name("pool"))(x)
    for stage, (count, channels) in enumerate(zip(blocks, widths, strict=True)):
        for i in range(count):
            x = b.basic_block(x, channels, 2 if (i == 0 and stage > 0) else 1)
    return layers.GlobalAveragePooling2D(name="embedding_pool")(x)


def _small_cnn(inputs, config: common_pb2.TrainingConfig):
    b = _Builder(config.group_norm, config.squeeze_excitation)
    x = inputs
    # Thin at full resolution, wide at low resolution: on a CPU the 28x28 layers cost memory traffic
    # more than arithmetic, while the 4x4 stage adds capacity (and a 256-d embedding) almost for free.
    widths = [max(8, int(round(c * config.width_multiplier))) for c in (16, 64, 128, 256)]
    if not config.small_input_stem:  # large images: cheap stride-4 entry before the small network
        x = layers.ReLU(name=b.name("relu"))(b.norm(b.conv(x, widths[0], 5, 4), widths[0]))
    for stage, channels in enumerate(widths):
        for _ in range(2):
            x = layers.ReLU(name=b.name("relu"))(b.norm(b.conv(x, channels), channels))
        x = b.squeeze_excite(x, channels)
        if stage < len(widths) - 1:
            x = layers.MaxPooling2D(2, padding="same", name=b.name("pool"))(x)
    return layers.GlobalAveragePooling2D(name="embedding_pool")(x)


def _application(inputs, backbone: int):
    apps = keras.applications
    common = dict(include_top=False, weights=None, input_shape=(None, None, 3), pooling="avg")
    if backbone == Backbone.BACKBONE_RESNET50:
        net = apps.ResNet50(**common)
    elif backbone == Backbone.BACKBONE_RESNET101:
        net = apps.ResNet101(**common)
    elif backbone == Backbone.BACKBONE_MOBILENET_V2:
        net = apps.MobileNetV2(**common)
    elif backbone == Backbone.BACKBONE_EFFICIENTNET_B0:
        net = apps.EfficientNetB0(**common)
        # EfficientNet rescales 0..255 inputs itself; our inputs are [-1, 1].
        inputs = layers.Rescaling(127.5, offset=127.5, name="to_0_255")(inputs)
    else:
        raise ValueError(f"not a keras.applications backbone: {backbone}")
    return net(inputs)


@contextmanager
def dtype_policy(mixed_precision: bool):
    """Builds layers under mixed_float16 (GPU) and restores the previous global policy afterwards."""
    previous = keras.config.dtype_policy()
    if mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_backbone(config: common_pb2.TrainingConfig) -> keras.Model:
    with dtype_policy(config.mixed_precision):
        inputs = keras.Input((None, None, 3), name="image")
        if config.backbone == Backbone.BACKBONE_RESNET18:
            features = _resnet(inputs, (2, 2, 2, 2), config)
        elif config.backbone == Backbone.BACKBONE_RESNET34:
            features = _resnet(inputs, (3, 4, 6, 3), config)
        elif config.backbone == Backbone.BACKBONE_SMALL_CNN:
            features = _small_cnn(inputs, config)
        else:
            features = _application(inputs, config.backbone)
        return keras.Model(inputs, features, name="backbone")


def build_network(config: common_pb2.TrainingConfig, tasks: tuple[Task, ...]) -> Network:
    backbone = build_backbone(config)
    inputs = keras.Input((None, None, 3), name="image")
    embedding = layers.Activation("linear", dtype="float32", name="embedding")(backbone(inputs))
    x = layers.Dropout(config.dropout, name="head_dropout")(embedding) if config.dropout > 0 else embedding
    outputs = {"embedding": embedding}
    for task in tasks:
        outputs[task.name] = layers.Dense(task.num_outputs, dtype="float32", name=f"head_{task.name}")(x)
    model = keras.Model(inputs, outputs, name="classifier")
    return Network(model, backbone, tasks)


def decay_variables(model: keras.Model) -> list:
    """The weights L2 weight decay applies to: convolution and dense kernels (not norms, not biases)."""
    return [v for v in model.trainable_variables if v.path.endswith("kernel") and len(v.shape) > 1]
