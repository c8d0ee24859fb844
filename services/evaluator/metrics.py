"""Classification metrics of one task, from ground truth, predicted class ids and probabilities.

Every number that scikit-learn already computes comes from scikit-learn (confusion matrix,
precision/recall/F1/support, accuracy, balanced accuracy, macro/weighted averages, top-k accuracy);
what it does not compute is written here: the ranked most-confused pairs and the expected
calibration error.

Conventions, written on every rendering of a confusion matrix too:

- `confusion_matrix[i][j]` counts images whose **ground truth is class i (row)** and whose
  **prediction is class j (column)** (scikit-learn's convention).
- The normalised matrix divides each row by its total: row i is the distribution of predictions for
  true class i, so its diagonal is the per-class recall. A class absent from the split has a row of 0.
- Examples whose label for the task is unknown (-1) are left out of that task's metrics.
- Precision of a class that is never predicted, and recall of a class absent from the split, are 0
  (scikit-learn's `zero_division=0`); `support` says which is which.

Expected calibration error (Guo et al., 2017, "On Calibration of Modern Neural Networks"):
the confidence of an example is its top probability; examples are put into `bins` equal-width bins
over [0, 1] (bin b holds confidences in (b/bins, (b+1)/bins], the first bin also holds 0);
ECE = sum over bins of (n_b / n) * |accuracy_b - mean confidence_b|. Default 15 bins, as in the paper.
The per-bin numbers (the reliability diagram) are kept in the result as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn import metrics as skm

DEFAULT_TOP_K = 5
DEFAULT_ECE_BINS = 15
CONFUSION_AXES = "rows = ground truth (true class), columns = predicted class"


@dataclass(frozen=True)
class TaskPredictions:
    """What the model said about one task, for the examples whose label is known."""

    task: str
    classes: list[str]
    y_true: np.ndarray  # int [n], class ids in 0..C-1
    y_pred: np.ndarray  # int [n], the model's class ids
    probabilities: np.ndarray  # float [n, C]

    @classmethod
    def from_arrays(cls, task: str, classes: list[str], labels, class_ids, probabilities) -> TaskPredictions:
        """Drops the examples whose label is unknown (-1, or outside 0..C-1)."""
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        class_ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
        probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(labels), len(classes))
        known = (labels >= 0) & (labels < len(classes))
        return cls(task, list(classes), labels[known], class_ids[known], probabilities[known])


def expected_calibration_error(y_true: np.ndarray, y_pred: np.ndarray, probabilities: np.ndarray,
                               bins: int = DEFAULT_ECE_BINS) -> tuple[float, list[dict]]:
    """(ECE, per-bin rows {lower, upper, count, accuracy, confidence}); see the module doc for the binning."""
    n = len(y_true)
    confidence = probabilities.max(axis=1) if n else np.zeros(0)
    correct = (y_true == y_pred).astype(np.float64)
    # Bin b holds (b/bins, (b+1)/bins]; ceil(c*bins)-1 does that, and 0 goes to the first bin.
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    ece, rows = 0.0, []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        accuracy = float(correct[members].mean()) if count else 0.0
        mean_conf = float(confidence[members].mean()) if count else 0.0
        if count:
            ece += count / n * abs(accuracy - mean_conf)
        rows.append({"lower": b / bins, "upper": (b + 1) / bins, "count": count,
                     "accuracy": accuracy, "confidence": mean_conf})
    return float(ece), rows


def top_k_accuracy(y_true: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    """scikit-learn's top_k_accuracy_score; with two classes it wants the positive class's score."""
    classes = probabilities.shape[1]
    if len(y_true) == 0:
        return 0.0
    if k >= classes:
        return 1.0
    scores = probabilities[:, 1] if classes == 2 else probabilities
    return float(skm.top_k_accuracy_score(y_true, scores, k=k, labels=np.arange(classes)))


def most_confused_pairs(matrix: np.ndarray, classes: list[str], limit: int = 20) -> list[dict]:
    """Off-diagonal cells, most images first (ties: higher rate, then class order). `rate` is the
    fraction of the true class's images predicted as the other class."""
    row_totals = matrix.sum(axis=1)
    pairs = []
    for i, j in zip(*np.nonzero(matrix), strict=True):
        if i == j:
            continue
        count = int(matrix[i, j])
        pairs.append({"true": classes[i], "predicted": classes[j], "true_id": int(i), "predicted_id": int(j),
                      "count": count, "rate": count / float(row_totals[i])})
    pairs.sort(key=lambda p: (-p["count"], -p["rate"], p["true_id"], p["predicted_id"]))
    return pairs[:limit]


def compute(predictions: TaskPredictions, top_k: int = DEFAULT_TOP_K, ece_bins: int = DEFAULT_ECE_BINS,
            confused_pairs: int = 20) -> dict:
    """Every number of one task, as a JSON-ready dict (the task's part of evaluation.json)."""
    p = predictions
    ids = np.arange(len(p.classes))
    n = int(len(p.y_true))
    matrix = skm.confusion_matrix(p.y_true, p.y_pred, labels=ids) if n else np.zeros((len(ids),) * 2, np.int64)
    row_totals = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, row_totals, out=np.zeros(matrix.shape), where=row_totals > 0)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        p.y_true, p.y_pred, labels=ids, average=None, zero_division=0) if n else (np.zeros(len(ids)),) * 4

    def average(kind: str) -> dict:
        if not n:
            return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
        pr, rc, f, _ = skm.precision_recall_fscore_support(p.y_true, p.y_pred, labels=ids, average=kind,
                                                           zero_division=0)
        return {"precision": float(pr), "recall": float(rc), "f1": float(f)}

    k = min(top_k, len(p.classes))
    ece, reliability = expected_calibration_error(p.y_true, p.y_pred, p.probabilities, ece_bins)
    return {
        "task": p.task,
        "classes": list(p.classes),
        "examples": n,
        "accuracy": float(skm.accuracy_score(p.y_true, p.y_pred)) if n else 0.0,
        "balanced_accuracy": float(skm.balanced_accuracy_score(p.y_true, p.y_pred)) if n else 0.0,
        "top_k": k,
        "top_k_accuracy": top_k_accuracy(p.y_true, p.probabilities, k),
        "macro_avg": average("macro"),
        "weighted_avg": average("weighted"),
        "per_class": [
            {"label": name, "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
             "support": int(support[i])}
            for i, name in enumerate(p.classes)],
        "confusion_matrix": {"axes": CONFUSION_AXES, "labels": list(p.classes), "counts": matrix.tolist(),
                             "row_normalised": normalised.tolist()},
        "most_confused": most_confused_pairs(matrix, p.classes, confused_pairs),
        "calibration": {"expected_calibration_error": ece, "bins": ece_bins,
                        "binning": "equal-width bins over the top probability, (lower, upper]",
                        "reliability": reliability},
    }
