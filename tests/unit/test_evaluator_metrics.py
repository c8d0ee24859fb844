"""Evaluator metrics against scikit-learn on the same predictions, and the numbers sklearn lacks."""

import numpy as np
import pytest
from sklearn import metrics as skm

from services.evaluator import metrics


@pytest.fixture
def predictions():
    rng = np.random.default_rng(7)
    n, classes = 400, ["a", "b", "c", "d", "e"]
    y_true = rng.integers(0, 5, n)
    logits = rng.normal(size=(n, 5))
    logits[np.arange(n), y_true] += rng.uniform(0, 3, n)  # better than chance, not perfect
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y_pred = probs.argmax(axis=1)
    return metrics.TaskPredictions("label", classes, y_true, y_pred, probs)


def test_every_number_equals_scikit_learn(predictions):
    p = predictions
    result = metrics.compute(p, top_k=3)
    labels = np.arange(5)
    assert result["confusion_matrix"]["counts"] == skm.confusion_matrix(p.y_true, p.y_pred, labels=labels).tolist()
    assert "rows = ground truth" in result["confusion_matrix"]["axes"]
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(p.y_true, p.y_pred))
    assert result["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(p.y_true, p.y_pred))
    assert result["top_k_accuracy"] == pytest.approx(skm.top_k_accuracy_score(p.y_true, p.probabilities, k=3))
    precision, recall, f1, support = skm.precision_recall_fscore_support(p.y_true, p.y_pred, labels=labels)
    for i, row in enumerate(result["per_class"]):
        assert row["precision"] == pytest.approx(precision[i])
        assert row["recall"] == pytest.approx(recall[i])
        assert row["f1"] == pytest.approx(f1[i])
        assert row["support"] == support[i]
    for kind in ("macro", "weighted"):
        pr, rc, f, _ = skm.precision_recall_fscore_support(p.y_true, p.y_pred, average=kind)
        assert result[f"{kind}_avg"] == pytest.approx({"precision": pr, "recall": rc, "f1": f})
    # the diagonal of the row-normalised matrix is the recall
    normalised = np.asarray(result["confusion_matrix"]["row_normalised"])
    assert np.diag(normalised) == pytest.approx(recall)


def test_unknown_labels_are_left_out_and_binary_top_k():
    p = metrics.TaskPredictions.from_arrays("t", ["no", "yes"], [0, 1, -1, 1], [0, 0, 1, 1],
                                            [[.9, .1], [.6, .4], [.2, .8], [.3, .7]])
    result = metrics.compute(p)
    assert result["examples"] == 3
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["top_k"] == 2 and result["top_k_accuracy"] == 1.0
    assert metrics.top_k_accuracy(p.y_true, p.probabilities, 1) == pytest.approx(2 / 3)


def test_most_confused_pairs_ranked_by_count_then_rate():
    matrix = np.array([[5, 3, 0], [1, 8, 3], [0, 6, 2]])
    pairs = metrics.most_confused_pairs(matrix, ["a", "b", "c"])
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        ("c", "b", 6), ("a", "b", 3), ("b", "c", 3), ("b", "a", 1)]
    assert pairs[1]["rate"] == pytest.approx(3 / 8)  # a->b outranks b->c (3/12) on rate


def test_expected_calibration_error_by_hand():
    # confidences 0.95, 0.95 (one right) -> bin (0.933, 1]; 0.55, 0.55 (both right) -> bin (0.533, 0.6]
    y_true = np.array([0, 1, 0, 1])
    y_pred = np.array([0, 0, 0, 1])
    probs = np.array([[.95, .05], [.95, .05], [.55, .45], [.45, .55]])
    ece, rows = metrics.expected_calibration_error(y_true, y_pred, probs, bins=15)
    assert ece == pytest.approx(0.5 * abs(0.5 - 0.95) + 0.5 * abs(1.0 - 0.55))
    assert sum(r["count"] for r in rows) == 4 and len(rows) == 15
    # a perfectly calibrated, perfectly confident model has no calibration error
    assert metrics.expected_calibration_error(np.array([0, 1]), np.array([0, 1]), np.eye(2))[0] == 0.0
