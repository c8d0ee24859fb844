"""Grad-CAM: the map has the image's size, is not constant, and peaks on the object when the class
evidence is localised (a tiny conv net trained for a few steps on synthetic images)."""

import io

import keras
import numpy as np
import pytest
from PIL import Image

from services.evaluator.cam import GradCam, last_conv_layer, overlay

SIZE, SQUARE = 32, 8


def synthetic(n: int, rng) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Dim noise; class 1 images also carry a bright square somewhere (its corner returned)."""
    images = rng.uniform(0, 0.3, (n, SIZE, SIZE, 3)).astype(np.float32)
    labels = rng.integers(0, 2, n)
    corners = []
    for i in range(n):
        y, x = rng.integers(0, SIZE - SQUARE, 2)
        corners.append((int(y), int(x)))
        if labels[i]:
            images[i, y:y + SQUARE, x:x + SQUARE] = 1.0
    return images * 2 - 1, labels, corners  # [-1, 1] like the trainer's inputs


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="last_conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    images, labels, _ = synthetic(512, rng)
    model.fit(images, labels, batch_size=32, epochs=3, verbose=0)
    return model


def encode(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(((image + 1) * 127.5).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_cam_peaks_on_the_object(trained):
    rng = np.random.default_rng(1)
    images, labels, corners = synthetic(64, rng)
    chosen = [i for i in range(len(images)) if labels[i] == 1][:6]
    assert trained.evaluate(images, labels, verbose=0)[1] > 0.9  # the net learned the task
    cam = GradCam(trained)
    assert cam.layer.name == "last_conv"
    maps = cam.heatmaps(images[chosen], [1] * len(chosen))
    for i, heat in zip(chosen, maps, strict=True):
        picture, full = overlay(encode(images[i]), heat)
        assert picture.size == (SIZE, SIZE) and full.shape == (SIZE, SIZE)
        assert full.max() - full.min() > 0.5  # not constant
        y, x = np.unravel_index(np.argmax(full), full.shape)
        top, left = corners[i]
        assert top - 1 <= y <= top + SQUARE and left - 1 <= x <= left + SQUARE, (i, (y, x), corners[i])


def test_last_conv_layer_looks_inside_nested_models():
    inner_in = keras.Input((16, 16, 3))
    inner = keras.Model(inner_in, keras.layers.GlobalAveragePooling2D()(
        keras.layers.Conv2D(4, 3, name="inner_conv")(inner_in)), name="backbone")
    outer_in = keras.Input((16, 16, 3))
    logits = keras.layers.Dense(3, name="head_label")(inner(outer_in))
    model = keras.Model(outer_in, {"label": logits})
    assert last_conv_layer(model).name == "inner_conv"
    maps = GradCam(model, task="label").heatmaps(np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)), [0, 2])
    assert maps.shape == (2, 14, 14) and maps.min() >= 0 and maps.max() <= 1


@pytest.mark.parametrize("backbone", ["BACKBONE_SMALL_CNN", "BACKBONE_RESNET18", "BACKBONE_MOBILENET_V2"])
def test_grad_cam_runs_on_the_trainer_backbones(backbone):
    backbones = pytest.importorskip("services.trainer.backbones")
    from classforge.v1 import common_pb2

    config = common_pb2.TrainingConfig(backbone=getattr(common_pb2, backbone), width_multiplier=0.125,
                                       small_input_stem=backbone != "BACKBONE_MOBILENET_V2", squeeze_excitation=True)
    network = backbones.build_network(config, (backbones.Task("label", ("a", "b", "c")),))
    size = 64 if backbone == "BACKBONE_MOBILENET_V2" else 32
    cam = GradCam(network.model, task="label")
    maps = cam.heatmaps(np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)), [0, 1])
    assert maps.ndim == 3 and maps.shape[0] == 2 and np.isfinite(maps).all()
    assert maps.shape[1] == size // 32 if backbone == "BACKBONE_MOBILENET_V2" else maps.shape[1] > 1


def export_tiny_model(tmp_path):
    """A tiny classforge network published the trainer's way (export.publish) into a local store;
    returns the model folder (models/job/, holding saved_model/, model.keras, manifest.json)."""
    backbones = pytest.importorskip("services.trainer.backbones")
    config_mod = pytest.importorskip("services.trainer.config")
    export = pytest.importorskip("services.trainer.export")
    from classforge.v1 import common_pb2
    from services.common.storage import LocalObjectStore

    keras.utils.set_random_seed(0)
    config = config_mod.with_defaults(common_pb2.TrainingConfig(
        backbone=common_pb2.BACKBONE_SMALL_CNN, input_size=SIZE, width_multiplier=0.125, small_input_stem=True))
    network = backbones.build_network(config, (backbones.Task("label", ("a", "b")),))
    label_map = {"tasks": [{"name": "label", "classes": ["a", "b"]}]}
    history = [{"epoch": 1, "stage": 2, "loss": 1.0}]
    store = LocalObjectStore(tmp_path / "store")
    export.publish(network, label_map, config_mod.to_json(config), history, SIZE, store, "models/job/",
                   tmp_path / "work")
    return tmp_path / "store" / "models" / "job", network


def test_the_evaluator_draws_cams_from_the_model_the_trainer_exports(tmp_path):
    from services.evaluator.engine import Example, Options, evaluate
    from services.evaluator.model import ServingModel, load_cam_model

    model_dir, network = export_tiny_model(tmp_path)
    cam_model = load_cam_model(model_dir)
    assert cam_model.model is not None, cam_model.missing
    x = cam_model.preprocess(encode(np.zeros((48, 40, 3), np.float32)))
    assert x.shape == (SIZE, SIZE, 3) and x.min() >= -1 and x.max() <= 1
    expected = network.model(x[None], training=False)["label"].numpy()
    assert np.allclose(cam_model.model(x[None], training=False)["label"].numpy(), expected, atol=1e-5)

    rng = np.random.default_rng(2)
    images, labels, _ = synthetic(6, rng)
    examples = [Example(encode(image), (int(label),), f"{i:064x}", f"img{i}.png")
                for i, (image, label) in enumerate(zip(images, labels, strict=True))]
    out = tmp_path / "report"
    result = evaluate(ServingModel(model_dir / "saved_model"), examples,
                      [{"name": "label", "classes": ["a", "b"]}], out, Options(batch_size=4), cam_model)
    assert result.cam_status == "ok"
    cams = result.tasks[0]["cams"]
    assert cams and all((out / c["path"]).is_file() for c in cams)
    assert Image.open(out / cams[0]["path"]).size == (SIZE, SIZE)


def test_a_model_without_model_keras_says_why_it_has_no_cams(tmp_path):
    from services.evaluator.engine import _write_cams
    from services.evaluator.model import load_cam_model

    cam_model = load_cam_model(tmp_path / "old-model")
    assert cam_model.model is None and "no model.keras" in cam_model.missing
    results = [{}]
    assert _write_cams(tmp_path, [], results, cam_model) == cam_model.missing and results == [{"cams": []}]
