"""Artefacts of a finished run, under `<prefix>` (models/<job_id>/ in the service):

- `saved_model/`: a SavedModel for TensorFlow Serving. Its `serving_default` signature takes a batch of
  encoded images (tf.string, input named `image_bytes`, so TF Serving's REST `{"b64": …}` convention
  works), decodes / resizes / normalises them in the graph with the same ops as validation
  (services/common/preprocessing.py), and returns per task `probabilities_<task>` [N, classes] float32,
  `class_ids_<task>` [N] int64 and `labels_<task>` [N] string (regression tasks: `value_<task>` [N]) —
  the contract in services/common/serving_signature.py.
  `assets/labels.json` is the label map. `saved_model.pb` is uploaded last, so a reader that sees it
  sees the whole model.
- `model.keras`: the whole Keras model (built-in layers only), which the evaluator loads with
  `keras.models.load_model` for Grad-CAM without any trainer code; its input is the preprocessed image
  (services/common/preprocessing.py), its outputs `{task: logits|value, "embedding"}`,
- `history.json` (per-epoch metrics), `training_curves.png`, `labels.json`, `config.json`,
  `model.weights.h5` and `backbone.weights.h5` (initial weights for later jobs),
- `manifest.json`, written last: the run is complete once it exists.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

from services.common import serving_signature as contract
from services.common.artefacts import KERAS_MODEL
from services.common.preprocessing import decode_for_serving
from services.common.storage import ObjectStore
from services.trainer.backbones import Network, Task

SERVING_INPUT = contract.INPUT_KEY


def serving_fn(network: Network, input_size: int):
    model = network.model
    tasks = network.tasks

    def serve(image_bytes):
        images = tf.map_fn(lambda b: decode_for_serving(b, input_size), image_bytes,
                           fn_output_signature=tf.TensorSpec([input_size, input_size, 3], tf.float32))
        outputs = model(images, training=False)
        result = {}
        for task in tasks:
            out = tf.cast(outputs[task.name], tf.float32)
            if task.regression:
                result[f"value_{task.name}"] = out[:, 0]
                continue
            probabilities = tf.nn.softmax(out, axis=-1)
            ids = tf.argmax(probabilities, axis=-1)
            result[contract.probabilities_key(task.name)] = probabilities
            result[contract.class_ids_key(task.name)] = ids
            result[f"labels_{task.name}"] = tf.gather(tf.constant(list(task.classes)), ids)
        return result

    return serve


def export_saved_model(network: Network, input_size: int, label_map: dict, directory: Path) -> Path:
    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    with tempfile.TemporaryDirectory() as scratch:
        labels_file = Path(scratch) / contract.LABELS_ASSET
        labels_file.write_text(json.dumps(label_map, indent=2))
        archive = keras.export.ExportArchive()
        archive.track(network.model)
        archive.add_endpoint(name=contract.SIGNATURE_NAME, fn=serving_fn(network, input_size),
                             input_signature=[tf.TensorSpec([None], tf.string, name=SERVING_INPUT)])
        # The label map travels as a SavedModel asset, copied into assets/ by the writer. ExportArchive.track()
        # keeps assets out of the saved object graph, so it hangs off the archive's root trackable instead.
        archive._tf_trackable.label_map = tf.saved_model.Asset(str(labels_file))
        archive.write_out(str(directory), verbose=False)
        if not (directory / "assets" / contract.LABELS_ASSET).exists():  # a future Keras that drops _tf_trackable
            (directory / "assets").mkdir(exist_ok=True)
            shutil.copy(labels_file, directory / "assets" / contract.LABELS_ASSET)
    return directory


def upload_dir(store: ObjectStore, local: Path, prefix: str, last: str | None = None) -> None:
    """Uploads every file under `local` to `prefix`; the file named `last` goes after all others."""
    files = sorted(p for p in Path(local).rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == last)
    for path in files:
        store.put_file(prefix + path.relative_to(local).as_posix(), path)


def plot_history(history: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [h["epoch"] for h in history]
    for key, label in (("loss", "train total"), ("data_loss", "train data"), ("regularization_loss", "train reg"),
                       ("val_loss", "validation")):
        points = [(h["epoch"], h[key]) for h in history if key in h]
        if points:
            ax_loss.plot(*zip(*points, strict=True), marker=".", label=label)
    for key, label in (("accuracy", "train"), ("val_accuracy", "validation")):
        points = [(h["epoch"], h[key]) for h in history if key in h]
        if points:
            ax_acc.plot(*zip(*points, strict=True), marker=".", label=label)
    stage_change = [h["epoch"] for prev, h in zip(history, history[1:], strict=False) if h["stage"] != prev["stage"]]
    for ax, title in ((ax_loss, "loss"), (ax_acc, "accuracy (first task)")):
        for x in stage_change:
            ax.axvline(x - 0.5, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if epochs:
            ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def publish(network: Network, label_map: dict, config_json: str, history: list[dict], input_size: int,
            store: ObjectStore, prefix: str, workdir: Path, extra_manifest: dict | None = None) -> dict[str, str]:
    """Writes every artefact of a finished run; returns their URIs ({"model", "history", …})."""
    out = Path(workdir) / "export"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "history.json").write_text(json.dumps(history, indent=1))
    (out / "labels.json").write_text(json.dumps(label_map, indent=2))
    (out / "config.json").write_text(config_json)
    plot_history(history, out / "training_curves.png")
    network.model.save_weights(out / "model.weights.h5")
    network.backbone.save_weights(out / "backbone.weights.h5")
    network.model.save(out / KERAS_MODEL)  # the evaluator's Grad-CAM loads it without trainer code
    saved = export_saved_model(network, input_size, label_map, out / "saved_model")
    upload_dir(store, saved, prefix + "saved_model/", last="saved_model.pb")
    for name in ("history.json", "labels.json", "config.json", "training_curves.png", "model.weights.h5",
                 "backbone.weights.h5", KERAS_MODEL):
        store.put_file(prefix + name, out / name)
    uris = {"model": store.uri(prefix + "saved_model") + "/", "history": store.uri(prefix + "history.json"),
            "curves": store.uri(prefix + "training_curves.png")}
    manifest = {"saved_model": prefix + "saved_model/", "history": prefix + "history.json",
                "labels": label_map, "input_size": input_size, "serving_input": SERVING_INPUT,
                "epochs": len(history), **(extra_manifest or {})}
    store.put_bytes(prefix + "manifest.json", json.dumps(manifest, indent=2).encode(), "application/json")
    return uris


def tasks_signature(tasks: tuple[Task, ...]) -> list[str]:
    names = []
    for task in tasks:
        names += [f"value_{task.name}"] if task.regression else [
            contract.probabilities_key(task.name), contract.class_ids_key(task.name), f"labels_{task.name}"]
    return names
