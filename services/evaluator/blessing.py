"""The blessing gate (TFX-style): the evaluator decides whether a model is good enough to serve;
the inference service publishes only blessed models.

Checks, each applied to every task of the model (`EvaluationGates` in common.proto):

| gate field | check | zero means |
|---|---|---|
| min_accuracy | accuracy >= min_accuracy | no floor |
| min_class_recall | recall of every class with test images >= min_class_recall | no floor |
| confusion_bounds | share of true_label images predicted as predicted_label <= max_rate | (rate 0: never) |
| max_regression (eps) | accuracy >= baseline accuracy - eps | the evaluator default (0) |
| max_class_regression (eps2) | recall of each class >= baseline recall - eps2 | the evaluator default (0) |

A confusion bound whose labels no task has fails (a gate that cannot be checked must not pass
silently). A class without test images cannot be checked for its recall floor: it is reported, not
failed. The regression checks run only when there is a comparable baseline (`Baseline`): the model
now served, measured on the same evaluation split; see domain.py for how it is found.

Reasons are one line each, a person can read them: failed checks first (`FAIL …`), then passed ones
(`pass …`), then notes (`note …`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from classforge.v1 import common_pb2

_TOLERANCE = 1e-12  # float round-off never decides a gate


@dataclass(frozen=True)
class Baseline:
    """The served model's numbers on the same evaluation split."""

    job_id: str
    source: str  # how the numbers were obtained: "report" (its evaluation.json) or "rerun"
    tasks: dict[str, dict]  # task -> {"accuracy": float, "recall": {label: float}, "support": {label: int}}

    @classmethod
    def from_evaluation(cls, job_id: str, source: str, tasks: list[dict]) -> Baseline:
        return cls(job_id, source, {
            t["task"]: {"accuracy": t["accuracy"],
                        "recall": {c["label"]: c["recall"] for c in t["per_class"]},
                        "support": {c["label"]: c["support"] for c in t["per_class"]}}
            for t in tasks})


@dataclass
class Decision:
    blessed: bool
    reasons: list[str]
    checks: list[dict] = field(default_factory=list)  # {check, task, subject, value, threshold, passed}

    def to_json(self) -> dict:
        return {"blessed": self.blessed, "reasons": list(self.reasons), "checks": list(self.checks)}


def _fmt(x: float) -> str:
    return f"{x:.4f}"


class _Collector:
    def __init__(self) -> None:
        self.failed: list[str] = []
        self.passed: list[str] = []
        self.notes: list[str] = []
        self.checks: list[dict] = []

    def check(self, kind: str, task: str, subject: str, value: float, threshold: float, ok: bool,
              text: str, quiet_pass: bool = False) -> None:
        """Records one check; `quiet_pass` leaves a passed per-class check out of the reasons (the
        caller writes one summary line for the classes instead)."""
        self.checks.append({"check": kind, "task": task, "subject": subject, "value": value,
                            "threshold": threshold, "passed": ok})
        if not ok:
            self.failed.append(f"FAIL {text}")
        elif not quiet_pass:
            self.passed.append(f"pass {text}")

    def summarise(self, kind: str, task: str, text: str) -> None:
        """One `pass` line for the per-class checks of `kind` that all passed (worst one named)."""
        mine = [x for x in self.checks if x["check"] == kind and x["task"] == task]
        if mine and all(x["passed"] for x in mine):
            worst = min(mine, key=lambda x: x["value"])
            self.passed.append(f"pass {text.format(n=len(mine), worst=worst['subject'], value=worst['value'])}")


def decide(tasks: list[dict], gates: common_pb2.EvaluationGates | None = None, baseline: Baseline | None = None,
           *, default_max_regression: float = 0.0, default_max_class_regression: float = 0.0,
           baseline_note: str = "") -> Decision:
    """`tasks`: the per-task dicts of metrics.compute(). Returns the decision with its reasons."""
    gates = gates if gates is not None else common_pb2.EvaluationGates()
    c = _Collector()
    multi = len(tasks) > 1

    def where(task: str) -> str:
        return f"[{task}] " if multi else ""

    for t in tasks:
        name = t["task"]
        if gates.min_accuracy > 0:
            ok = t["accuracy"] + _TOLERANCE >= gates.min_accuracy
            c.check("min_accuracy", name, "", t["accuracy"], gates.min_accuracy, ok,
                    f"{where(name)}accuracy {_fmt(t['accuracy'])} {'>=' if ok else '<'} min_accuracy "
                    f"{_fmt(gates.min_accuracy)}")
        if gates.min_class_recall > 0:
            for cls in t["per_class"]:
                if cls["support"] == 0:
                    c.notes.append(f"note {where(name)}class {cls['label']!r} has no evaluation images: "
                                   f"its recall floor was not checked")
                    continue
                ok = cls["recall"] + _TOLERANCE >= gates.min_class_recall
                c.check("min_class_recall", name, cls["label"], cls["recall"], gates.min_class_recall, ok,
                        f"{where(name)}recall of {cls['label']!r} {_fmt(cls['recall'])} < "
                        f"min_class_recall {_fmt(gates.min_class_recall)} ({cls['support']} images)",
                        quiet_pass=True)
            c.summarise("min_class_recall", name,
                        f"{where(name)}recall of all {{n}} classes >= min_class_recall "
                        f"{_fmt(gates.min_class_recall)} (lowest {{worst!r}} {{value:.4f}})")

    for bound in gates.confusion_bounds:
        pair = f"{bound.true_label!r} -> {bound.predicted_label!r}"
        owners = [t for t in tasks if bound.true_label in t["classes"] and bound.predicted_label in t["classes"]]
        if not owners:
            c.check("confusion_bound", "", pair, float("nan"), bound.max_rate, False,
                    f"confusion bound {pair}: no task has both labels, so the bound cannot be checked")
            continue
        for t in owners:
            i, j = t["classes"].index(bound.true_label), t["classes"].index(bound.predicted_label)
            support = sum(t["confusion_matrix"]["counts"][i])
            if support == 0:
                c.notes.append(f"note {where(t['task'])}confusion bound {pair}: {bound.true_label!r} has no "
                               f"evaluation images, not checked")
                continue
            rate = t["confusion_matrix"]["row_normalised"][i][j]
            ok = rate <= bound.max_rate + _TOLERANCE
            count = t["confusion_matrix"]["counts"][i][j]
            c.check("confusion_bound", t["task"], pair, rate, bound.max_rate, ok,
                    f"{where(t['task'])}{count} of {support} {bound.true_label!r} images predicted as "
                    f"{bound.predicted_label!r}: rate {_fmt(rate)} {'<=' if ok else '>'} max_rate "
                    f"{_fmt(bound.max_rate)}")

    if baseline is None:
        c.notes.append(f"note no served model to compare with{': ' + baseline_note if baseline_note else ''}; "
                       f"regression checks skipped")
    else:
        _regression(c, tasks, baseline, gates.max_regression or default_max_regression,
                    gates.max_class_regression or default_max_class_regression, where)
        if baseline_note:
            c.notes.append(f"note {baseline_note}")
    blessed = not c.failed
    verdict = "blessed" if blessed else f"not blessed: {len(c.failed)} check(s) failed"
    if not c.checks:
        verdict += " (no thresholds set)"
    return Decision(blessed, [verdict, *c.failed, *c.passed, *c.notes], c.checks)


def _regression(c: _Collector, tasks: list[dict], baseline: Baseline, eps: float, eps_class: float, where) -> None:
    against = f"baseline {baseline.job_id} ({'its report' if baseline.source == 'report' else 're-run'})"
    for t in tasks:
        name = t["task"]
        base = baseline.tasks.get(name)
        if base is None:
            c.notes.append(f"note {where(name)}{against} has no task {name!r}: no regression check")
            continue
        ok = t["accuracy"] + _TOLERANCE >= base["accuracy"] - eps
        c.check("max_regression", name, "", t["accuracy"] - base["accuracy"], -eps, ok,
                f"{where(name)}accuracy {_fmt(t['accuracy'])} vs {against} {_fmt(base['accuracy'])}: "
                f"change {t['accuracy'] - base['accuracy']:+.4f}, allowed regression {_fmt(eps)}")
        for cls in t["per_class"]:
            label = cls["label"]
            if cls["support"] == 0 or label not in base["recall"]:
                continue
            delta = cls["recall"] - base["recall"][label]
            ok = delta + _TOLERANCE >= -eps_class
            c.check("max_class_regression", name, label, delta, -eps_class, ok,
                    f"{where(name)}recall of {label!r} {_fmt(cls['recall'])} vs {against} "
                    f"{_fmt(base['recall'][label])}: change {delta:+.4f}, allowed regression {_fmt(eps_class)}",
                    quiet_pass=True)
        c.summarise("max_class_regression", name,
                    f"{where(name)}no class recall regressed beyond {_fmt(eps_class)} against {against} "
                    f"({{n}} classes; smallest change {{worst!r}} {{value:+.4f}})")
