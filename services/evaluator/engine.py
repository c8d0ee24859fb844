"""One evaluation pass: the SavedModel's serving signature over the evaluation split, in batches, and
everything computed from it (metrics, gallery, suspected mislabels, CAMs). No gRPC, no Kafka, no
object store: the domain, the CLI and the benchmark all call `evaluate`.

Streaming with bounded memory: per example only labels, probabilities, the source id and a 64-bit
image hash are kept; image bytes are kept only for the examples the gallery, the mislabel list or the
CAMs select (bounded heaps). The model runs one batch ahead in a worker thread (TensorFlow releases
the GIL), so selection of batch k overlaps the model on batch k+1. The images' difference hashes
(near-duplicates) come with the records (`image/dhash`, computed once by ingest); only for records
built without them (datasets made before) are the images decoded again here, by two more threads, a
few batches in flight.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import NamedTuple

import numpy as np

from services.common import image_hash, mislabel_review
from services.common.errors import FailedPrecondition
from services.evaluator import gallery as gallery_mod
from services.evaluator import metrics as metrics_mod
from services.evaluator import mislabels as mislabels_mod
from services.evaluator import predictions as predictions_mod
from services.evaluator.images import safe_names, save_thumbnail
from services.evaluator.model import CamModel, ServingModel
from services.evaluator.samples import Sample, TopN

log = logging.getLogger("classforge.evaluator")
HASH_BATCHES_IN_FLIGHT = 4


class Example(NamedTuple):
    """One evaluation image as read from the records."""

    encoded: bytes
    labels: tuple[int, ...]  # one per task of the records, -1 unknown
    source_id: str = ""
    filename: str = ""
    dhash: int | None = None  # from the records (image/dhash); None: computed here from `encoded`


@dataclass
class Options:
    batch_size: int = 64
    gallery_per_cell: int = gallery_mod.DEFAULT_PER_CELL
    mislabel_top: int = mislabels_mod.DEFAULT_TOP
    mislabel_min_confidence: float = mislabels_mod.DEFAULT_MIN_CONFIDENCE
    near_duplicate_distance: int = mislabels_mod.DEFAULT_MAX_DISTANCE
    cam_per_class: int = 2  # correct and wrong images each, per true class
    top_k: int = metrics_mod.DEFAULT_TOP_K
    ece_bins: int = metrics_mod.DEFAULT_ECE_BINS
    artefacts: bool = True  # False: numbers only (a baseline re-run, the benchmark's bare path)


@dataclass
class TaskState:
    name: str
    classes: list[str]
    position: int  # index of the task in the records' labels
    folders: list[str] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    probabilities: list[np.ndarray] = field(default_factory=list)
    class_ids: list[np.ndarray] = field(default_factory=list)
    gallery: gallery_mod.GallerySelector | None = None
    mistakes: mislabels_mod.ConfidentMistakes | None = None
    cam_correct: dict[int, TopN[Sample]] = field(default_factory=dict)
    cam_wrong: dict[int, TopN[Sample]] = field(default_factory=dict)


@dataclass
class Evaluation:
    """The result of one pass, before the blessing decision."""

    tasks: list[dict]  # metrics.compute() per task, plus "gallery", "mislabels", "cams" entries
    examples: int
    duplicates: list[dict]
    seconds: float
    images_per_second: float
    cam_status: str


def _hashes(batch: list[Example]) -> list[int | None]:
    """The batch's difference hashes: the records' where they carry one, else from the image bytes."""
    return [e.dhash if e.dhash is not None else image_hash.dhash(e.encoded) for e in batch]


class _Done:
    """A result already at hand, in the queue of hashing futures."""

    def __init__(self, value: list[int | None]):
        self._value = value

    def result(self) -> list[int | None]:
        return self._value


def _batches(examples: Iterable[Example], size: int) -> Iterator[list[Example]]:
    iterator = iter(examples)
    while batch := list(islice(iterator, size)):
        yield batch


def predict_ahead(model: ServingModel, batches: Iterable[list[Example]]
                  ) -> Iterator[tuple[list[Example], dict[str, tuple[np.ndarray, np.ndarray]]]]:
    """(batch, model outputs), with the model working on the next batch while the caller handles one."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="classforge-evaluator-model") as pool:
        pending = None
        for batch in batches:
            future = pool.submit(model, [e.encoded for e in batch])
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = (batch, future)
        if pending is not None:
            yield pending[0], pending[1].result()


def match_tasks(model: ServingModel, record_tasks: list[dict]) -> list[TaskState]:
    """The model's tasks, each with its label position in the records; FailedPrecondition (a user-data
    problem) when the records lack a task of the model or name its classes differently."""
    positions = {t["name"]: (i, list(t["classes"])) for i, t in enumerate(record_tasks)}
    states = []
    for task in model.tasks:
        if task not in positions:
            raise FailedPrecondition(f"the records have no labels for the model's task {task!r} "
                                     f"(records tasks: {sorted(positions)})")
        position, classes = positions[task]
        if classes != model.classes[task]:
            raise FailedPrecondition(f"task {task!r}: the records' classes {classes} differ from the model's "
                                     f"{model.classes[task]}: evaluate a model on records of its own dataset")
        states.append(TaskState(task, classes, position))
    return states


def evaluate(model: ServingModel, examples: Iterable[Example], record_tasks: list[dict], out_dir: Path | None,
             options: Options | None = None, cam_model: CamModel | None = None,
             refetch: Callable[[], Iterable[Example]] | None = None) -> Evaluation:
    """Runs the model over `examples` and writes the image artefacts (gallery/, mislabels/, cams/)
    under `out_dir`; the report itself (plots, evaluation.json, index.html) is report.write's job.

    `record_tasks`: the records' labels.json tasks, in label order. `cam_model`: from
    model.load_cam_model (a model, or why there is none); None: no Grad-CAM asked for. `refetch`:
    iterates the same examples again (thumbnails of conflicting duplicates, whose pairs are only known
    at the end); None skips them."""
    options = options or Options()
    states = match_tasks(model, record_tasks)
    for s in states:
        s.folders = safe_names(s.classes)
        if options.artefacts:
            s.gallery = gallery_mod.GallerySelector(options.gallery_per_cell)
            s.mistakes = mislabels_mod.ConfidentMistakes(options.mislabel_top, options.mislabel_min_confidence)
    source_ids: list[str] = []
    filenames: list[str] = []
    hashes: list[int | None] = []
    all_labels: list[tuple[int, ...]] = []
    started = time.perf_counter()
    count = 0
    hashing = ThreadPoolExecutor(max_workers=2, thread_name_prefix="classforge-evaluator-hash")
    hash_batches: deque = deque()  # futures, one per batch, a few in flight: PIL releases the GIL
    for batch, outputs in predict_ahead(model, _batches(examples, options.batch_size)):
        labels = np.asarray([e.labels for e in batch], dtype=np.int64).reshape(len(batch), -1)
        for s in states:
            probabilities, class_ids = outputs[s.name]
            s.labels.append(labels[:, s.position])
            s.probabilities.append(probabilities)
            s.class_ids.append(class_ids)
            if options.artefacts:
                _select(s, batch, count, labels[:, s.position], probabilities, class_ids, options)
        if options.artefacts:
            source_ids.extend(e.source_id for e in batch)
            filenames.extend(e.filename for e in batch)
            if any(e.dhash is None for e in batch):
                hash_batches.append(hashing.submit(_hashes, batch))
            else:
                hash_batches.append(_Done([e.dhash for e in batch]))
            while len(hash_batches) > HASH_BATCHES_IN_FLIGHT:
                hashes.extend(hash_batches.popleft().result())
            all_labels.extend(tuple(int(v) for v in row) for row in labels)
        count += len(batch)
    while hash_batches:
        hashes.extend(hash_batches.popleft().result())
    hashing.shutdown()
    seconds = time.perf_counter() - started
    if count == 0:
        raise FailedPrecondition("the evaluation split has no examples")

    results = []
    for s in states:
        labels = np.concatenate(s.labels)
        predictions = metrics_mod.TaskPredictions.from_arrays(
            s.name, s.classes, labels, np.concatenate(s.class_ids), np.concatenate(s.probabilities))
        result = metrics_mod.compute(predictions, options.top_k, options.ece_bins)
        result["unlabelled_examples"] = int(np.sum((labels < 0) | (labels >= len(s.classes))))
        results.append(result)

    duplicates: list[dict] = []
    cam_status = "not requested"
    if options.artefacts and out_dir is not None:
        out_dir = Path(out_dir)
        multi = len(states) > 1
        for s, result in zip(states, results, strict=True):
            base = Path(s.name) if multi else Path()
            result["folders"] = s.folders
            result["gallery"] = [
                {**entry, "path": (Path("gallery") / base / entry["path"]).as_posix()}
                for entry in gallery_mod.write(out_dir / "gallery" / base, s.gallery, s.folders)]
            result["mislabels"] = _write_mistakes(out_dir, base, s)
        review_rows = _review_rows(states, source_ids, filenames)
        for s, result in zip(states, results, strict=True):
            result["mislabels"]["review_file"] = mislabel_review.FILE_NAME
            result["mislabels"]["review_rows"] = sum(1 for row in review_rows if row["task"] == s.name)
        mislabel_review.write(out_dir / mislabel_review.FILE_NAME, review_rows)
        cam_status = _write_cams(out_dir, states, results, cam_model)
        predictions_mod.write(out_dir / predictions_mod.FILE_NAME, source_ids, filenames,
                              [predictions_mod.TaskColumns(s.name, s.classes, np.concatenate(s.labels),
                                                           np.concatenate(s.class_ids),
                                                           np.concatenate(s.probabilities)) for s in states])
        duplicates = _duplicates(out_dir, states, source_ids, hashes, all_labels, options, refetch)
    return Evaluation(results, count, duplicates, seconds, count / seconds if seconds > 0 else 0.0, cam_status)


def _select(s: TaskState, batch: list[Example], offset: int, labels: np.ndarray, probabilities: np.ndarray,
            class_ids: np.ndarray, options: Options) -> None:
    rows = np.arange(len(batch))
    predicted_p = probabilities[rows, np.clip(class_ids, 0, probabilities.shape[1] - 1)]
    for i, example in enumerate(batch):
        true, predicted, p = int(labels[i]), int(class_ids[i]), float(predicted_p[i])
        if not 0 <= true < len(s.classes):
            continue
        s.mistakes.count(true, predicted, p)
        keep_gallery = s.gallery.would_keep(true, predicted, p)
        keep_mistake = s.mistakes.would_keep(true, predicted, p)
        cams = s.cam_correct if true == predicted else s.cam_wrong
        cam = cams.setdefault(true, TopN(options.cam_per_class))
        keep_cam = cam.would_keep(p)
        if not (keep_gallery or keep_mistake or keep_cam):
            continue
        sample = Sample(offset + i, example.source_id, example.filename, true, predicted, p,
                        float(probabilities[i, true]), example.encoded)
        if keep_gallery:
            s.gallery.offer(sample)
        if keep_mistake:
            s.mistakes.offer(sample)
        if keep_cam:
            cam.offer(p, sample)


def _write_mistakes(out_dir: Path, base: Path, s: TaskState) -> dict:
    ranked = []
    for rank, sample in enumerate(s.mistakes.ranked(), start=1):
        path = Path("mislabels") / base / f"{rank:03d}_{gallery_mod.file_name(sample)}"
        save_thumbnail(sample.encoded, out_dir / path)
        ranked.append({"rank": rank, **sample.describe(s.classes), "thumbnail": path.as_posix()})
    return {"rule": f"wrong predictions with probability >= {s.mistakes.min_confidence}, most confident first",
            "total": s.mistakes.total, "ranked": ranked}


def _review_rows(states: list[TaskState], source_ids: list[str], filenames: list[str]) -> list[dict]:
    """Every wrongly predicted image of every task, for mislabels.csv, highest score first. The score is
    the normalised margin of confident learning: p(predicted) - p(given label)."""
    rows = []
    for s in states:
        labels, predicted = np.concatenate(s.labels), np.concatenate(s.class_ids)
        probabilities = np.concatenate(s.probabilities)
        known = (labels >= 0) & (labels < len(s.classes))
        for i in np.flatnonzero(known & (labels != predicted)):
            given, guess = int(labels[i]), int(predicted[i])
            confidence = float(probabilities[i, guess]) if 0 <= guess < probabilities.shape[1] else 0.0
            rows.append({"image_id": source_ids[i], "path": filenames[i], "task": s.name,
                         "given_label": s.classes[given],
                         "predicted_label": s.classes[guess] if 0 <= guess < len(s.classes) else str(guess),
                         "confidence": f"{confidence:.4f}",
                         "score": f"{confidence - float(probabilities[i, given]):.4f}"})
    rows.sort(key=lambda row: -float(row["score"]))
    return rows


def _write_cams(out_dir: Path, states: list[TaskState], results: list[dict], cam_model: CamModel | None) -> str:
    if cam_model is None or cam_model.model is None:
        for result in results:
            result["cams"] = []
        return cam_model.missing if cam_model is not None else "no Keras model given: no Grad-CAM"
    from services.evaluator.cam import GradCam, overlay

    keras_model, preprocess = cam_model.model, cam_model.preprocess
    multi = len(states) > 1
    status = "ok"
    for index, (s, result) in enumerate(zip(states, results, strict=True)):
        result["cams"] = []
        samples = [(kind, sample) for kind, table in (("correct", s.cam_correct), ("wrong", s.cam_wrong))
                   for cls in sorted(table) for sample in table[cls].items()]
        if not samples:
            continue
        try:
            cam = GradCam(keras_model, task=s.name, task_index=index)
            batch = np.stack([preprocess(sample.encoded) for _, sample in samples])
            maps = cam.heatmaps(batch, [sample.predicted for _, sample in samples])
        except Exception as exc:  # noqa: BLE001 - a CAM problem is reported, the evaluation goes on
            log.warning("Grad-CAM failed", extra={"task": s.name}, exc_info=True)
            status = f"Grad-CAM failed: {type(exc).__name__}: {exc}"
            continue
        base = Path("cams") / (s.name if multi else "")
        for (kind, sample), heat in zip(samples, maps, strict=True):
            image, _ = overlay(sample.encoded, heat)
            path = base / s.folders[sample.true] / f"{kind}_{gallery_mod.file_name(sample)}"
            (out_dir / path).parent.mkdir(parents=True, exist_ok=True)
            image.save(out_dir / path, format="PNG")
            result["cams"].append({"kind": kind, **sample.describe(s.classes), "path": path.as_posix(),
                                   "layer": cam.layer.name, "explains": s.classes[sample.predicted]})
    return status


def _duplicates(out_dir: Path, states: list[TaskState], source_ids: list[str], hashes: list[int | None],
                labels: list[tuple[int, ...]], options: Options, refetch) -> list[dict]:
    positions = [s.position for s in states]
    task_labels = np.asarray([[row[p] for p in positions] for row in labels], dtype=np.int64)
    conflicts = mislabels_mod.conflicting_duplicates(source_ids, hashes, task_labels,
                                                     options.near_duplicate_distance)
    wanted = {i for c in conflicts for i in (c.a, c.b)}
    thumbnails: dict[int, str] = {}
    if wanted and refetch is not None:
        for index, example in enumerate(refetch()):
            if index in wanted:
                path = Path("duplicates") / f"{index:06d}_{(example.source_id or 'image')[:12]}.png"
                save_thumbnail(example.encoded, out_dir / path)
                thumbnails[index] = path.as_posix()
            if len(thumbnails) == len(wanted):
                break

    def describe(i: int) -> dict:
        return {"index": i, "source_id": source_ids[i],
                "labels": {s.name: (s.classes[v] if 0 <= (v := labels[i][s.position]) < len(s.classes) else None)
                           for s in states},
                "thumbnail": thumbnails.get(i)}

    return [{"kind": c.kind, "distance": c.distance, "a": describe(c.a), "b": describe(c.b)} for c in conflicts]
