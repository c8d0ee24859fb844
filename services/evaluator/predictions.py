"""`predictions.csv`: what the model said about every image of the evaluation split, one row per image
and task. It is what makes two runs comparable image by image (`compare.py` matches rows by
source_id, the sha256 of the original image bytes), so it is written by every evaluation that writes
artefacts. Columns: index, source_id, filename, task, true, predicted, probability (of `predicted`);
`true` is empty for an unlabelled image."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FILE_NAME = "predictions.csv"
COLUMNS = ("index", "source_id", "filename", "task", "true", "predicted", "probability")


@dataclass
class TaskColumns:
    task: str
    classes: list[str]
    labels: np.ndarray  # true class ids, -1 (or out of range) for unknown
    predicted: np.ndarray  # predicted class ids
    probabilities: np.ndarray  # (n, classes)


@dataclass(frozen=True)
class Prediction:
    index: int
    source_id: str
    filename: str
    true: str | None
    predicted: str
    probability: float

    @property
    def correct(self) -> bool:
        return self.true == self.predicted


def write(path: Path, source_ids: list[str], filenames: list[str], tasks: list[TaskColumns]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for t in tasks:
            rows = np.arange(len(t.predicted))
            chosen = t.probabilities[rows, np.clip(t.predicted, 0, t.probabilities.shape[1] - 1)]
            for i in rows:
                true = int(t.labels[i])
                writer.writerow((int(i), source_ids[i], filenames[i], t.task,
                                 t.classes[true] if 0 <= true < len(t.classes) else "",
                                 t.classes[int(t.predicted[i])], f"{float(chosen[i]):.6f}"))
    return path


def parse(text: str) -> dict[str, list[Prediction]]:
    """predictions.csv text -> per task, the rows in split order."""
    reader = csv.DictReader(io.StringIO(text))
    missing = set(COLUMNS) - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"predictions.csv lacks the columns {sorted(missing)}")
    tasks: dict[str, list[Prediction]] = {}
    for row in reader:
        tasks.setdefault(row["task"], []).append(Prediction(
            int(row["index"]), row["source_id"], row["filename"], row["true"] or None, row["predicted"],
            float(row["probability"])))
    return tasks
