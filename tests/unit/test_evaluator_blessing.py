"""The blessing gate on crafted metrics: each threshold kind passes and fails with the right reason."""

import numpy as np

from classforge.v1 import common_pb2
from services.evaluator import blessing, metrics

CLASSES = ["cat", "dog", "fox"]


def task(matrix) -> dict:
    """Metrics of a task whose confusion matrix (rows = truth) is `matrix`."""
    matrix = np.asarray(matrix)
    y_true = np.repeat(np.arange(3), matrix.sum(axis=1))
    y_pred = np.concatenate([np.repeat(np.arange(3), row) for row in matrix])
    probs = np.eye(3)[y_pred] * 0.8 + 0.2 / 3
    return metrics.compute(metrics.TaskPredictions("label", CLASSES, y_true, y_pred, probs))


GOOD = task([[9, 1, 0], [0, 10, 0], [0, 2, 8]])  # accuracy 27/30 = 0.9; recall cat .9 dog 1 fox .8


def gates(**kw) -> common_pb2.EvaluationGates:
    bounds = kw.pop("bounds", [])
    g = common_pb2.EvaluationGates(**kw)
    for t, p, rate in bounds:
        g.confusion_bounds.add(true_label=t, predicted_label=p, max_rate=rate)
    return g


def test_no_thresholds_blesses_and_says_so():
    d = blessing.decide([GOOD])
    assert d.blessed and d.reasons[0] == "blessed (no thresholds set)"
    assert any("regression checks skipped" in r for r in d.reasons)


def test_min_accuracy():
    assert blessing.decide([GOOD], gates(min_accuracy=0.9)).blessed
    d = blessing.decide([GOOD], gates(min_accuracy=0.95))
    assert not d.blessed
    assert d.reasons[:2] == ["not blessed: 1 check(s) failed", "FAIL accuracy 0.9000 < min_accuracy 0.9500"]


def test_min_class_recall_names_the_failing_class_only():
    ok = blessing.decide([GOOD], gates(min_class_recall=0.8))
    assert ok.blessed and any("recall of all 3 classes >= min_class_recall" in r and "'fox'" in r for r in ok.reasons)
    d = blessing.decide([GOOD], gates(min_class_recall=0.85))
    failed = [r for r in d.reasons if r.startswith("FAIL")]
    assert not d.blessed and len(failed) == 1 and "'fox' 0.8000 < min_class_recall 0.8500" in failed[0]


def test_confusion_bound_and_unknown_labels():
    assert blessing.decide([GOOD], gates(bounds=[("fox", "dog", 0.2)])).blessed
    d = blessing.decide([GOOD], gates(bounds=[("fox", "dog", 0.1)]))
    assert not d.blessed
    assert any(r.startswith("FAIL") and "2 of 10 'fox' images predicted as 'dog'" in r and "> max_rate 0.1000" in r
               for r in d.reasons)
    d = blessing.decide([GOOD], gates(bounds=[("fox", "wolf", 0.1)]))
    assert not d.blessed and any("no task has both labels" in r for r in d.reasons)


def test_regression_against_the_baseline():
    better = blessing.Baseline.from_evaluation("old", "report", [task([[10, 0, 0], [0, 10, 0], [0, 1, 9]])])
    # overall: 0.9 vs 29/30 -> down 0.0667; cat recall 0.9 vs 1.0 and fox 0.8 vs 0.9 -> down 0.1 each
    d = blessing.decide([GOOD], gates(max_regression=0.07, max_class_regression=0.15), better)
    assert d.blessed, d.reasons
    d = blessing.decide([GOOD], gates(max_regression=0.05, max_class_regression=0.15), better)
    assert not d.blessed and any(r.startswith("FAIL accuracy") and "baseline old" in r for r in d.reasons)
    d = blessing.decide([GOOD], gates(max_regression=0.07, max_class_regression=0.05), better)
    failed = [r for r in d.reasons if r.startswith("FAIL")]
    assert not d.blessed and len(failed) == 2
    assert "recall of 'cat' 0.9000 vs baseline old" in failed[0] and "recall of 'fox' 0.8000" in failed[1]
    # zero tolerance (the default) forbids any drop; the evaluator's default can loosen it
    assert not blessing.decide([GOOD], gates(), better).blessed
    assert blessing.decide([GOOD], gates(), better, default_max_regression=0.07,
                           default_max_class_regression=0.2).blessed


def test_no_regression_when_better_than_baseline():
    worse = blessing.Baseline.from_evaluation("old", "rerun", [task([[5, 5, 0], [0, 10, 0], [0, 5, 5]])])
    d = blessing.decide([GOOD], gates(), worse)
    assert d.blessed and any("re-run" in r for r in d.reasons)
