"""Two evaluations side by side: what changed between run A and run B, and on which images.

Pure logic and rendering: `compare` takes the two evaluation.json documents, their predictions.csv
rows, specs and training histories, and returns one JSON-able dict; `write` renders it as a folder
(comparison.json, index.html, plots/training_curves.png; thumbnails are the caller's). The domain
reads the inputs from the object store; the CLI and the CompareEvaluations RPC call the domain.

Images are matched by source_id (the sha256 of the original image bytes), so a flip is the same
picture judged differently, even when the two runs used different records builds. When the test sets
differ the comparison says how (counts, overlap) and the flips cover the shared images only.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402

from services.evaluator.predictions import Prediction  # noqa: E402

COMPARISON_JSON = "comparison.json"
INDEX_HTML = "index.html"
OVERALL_METRICS = ("accuracy", "balanced_accuracy", "top_k_accuracy")
CLASS_METRICS = ("precision", "recall", "f1")
DEFAULT_FLIPS_SHOWN = 24


def _delta(a: float | None, b: float | None) -> dict:
    both = isinstance(a, int | float) and isinstance(b, int | float)
    return {"a": a, "b": b, "delta": (b - a) if both else None}


def _records_key(evaluation: dict) -> tuple:
    records = evaluation.get("records") or {}
    return records.get("build_id"), evaluation.get("split")


def compare_test_sets(a: dict, b: dict, preds_a: dict[str, list[Prediction]] | None,
                      preds_b: dict[str, list[Prediction]] | None) -> dict:
    """Whether the two runs were evaluated on the same images, and if not, how they differ."""
    same_build = _records_key(a) == _records_key(b) and _records_key(a)[0] is not None
    out = {"same_records": same_build, "a_examples": a.get("examples", 0), "b_examples": b.get("examples", 0),
           "a_records": a.get("records"), "b_records": b.get("records"), "a_split": a.get("split"),
           "b_split": b.get("split")}
    if preds_a is None or preds_b is None:
        out["overlap"] = None
        out["note"] = ("same records build and split" if same_build else
                       "the records builds or splits differ and a run has no predictions.csv (evaluated before "
                       "it existed): images cannot be matched, only the aggregate numbers are compared")
        return out
    ids_a = {p.source_id for rows in preds_a.values() for p in rows}
    ids_b = {p.source_id for rows in preds_b.values() for p in rows}
    shared = ids_a & ids_b
    out.update(overlap=len(shared), only_a=len(ids_a - ids_b), only_b=len(ids_b - ids_a))
    if same_build or (ids_a == ids_b):
        out["note"] = "the same test images in both runs"
    else:
        out["note"] = (f"the test sets differ: A has {len(ids_a)} distinct images, B has {len(ids_b)}, "
                       f"{len(shared)} are in both; the metrics are over different images, and the flips "
                       f"cover the {len(shared)} shared ones")
    out["same_images"] = ids_a == ids_b
    return out


def _per_class(task_a: dict, task_b: dict) -> list[dict]:
    rows_a = {c["label"]: c for c in task_a.get("per_class", [])}
    rows_b = {c["label"]: c for c in task_b.get("per_class", [])}
    rows = []
    for label in [*rows_a, *(k for k in rows_b if k not in rows_a)]:
        ca, cb = rows_a.get(label, {}), rows_b.get(label, {})
        row = {"label": label, "support": {"a": ca.get("support"), "b": cb.get("support")}}
        for metric in CLASS_METRICS:
            row[metric] = _delta(ca.get(metric), cb.get(metric))
        row["change"] = max((abs(row[m]["delta"]) for m in CLASS_METRICS if row[m]["delta"] is not None),
                            default=0.0)
        rows.append(row)
    return sorted(rows, key=lambda r: (-r["change"], r["label"]))


def _confusion_changes(task_a: dict, task_b: dict) -> list[dict]:
    """Off-diagonal cells whose count changed, largest change first (classes named in both runs)."""
    def cells(task: dict) -> dict[tuple[str, str], int]:
        cm = task.get("confusion_matrix") or {}
        labels, counts = cm.get("labels", []), cm.get("counts", [])
        return {(labels[i], labels[j]): int(counts[i][j]) for i in range(len(labels)) for j in range(len(labels))
                if i != j}

    ca, cb = cells(task_a), cells(task_b)
    changes = []
    for key in sorted(set(ca) | set(cb)):
        a, b = ca.get(key, 0), cb.get(key, 0)
        if a != b:
            changes.append({"true": key[0], "predicted": key[1], "a": a, "b": b, "delta": b - a,
                            "direction": "grew" if b > a else "shrank"})
    return sorted(changes, key=lambda c: (-abs(c["delta"]), c["true"], c["predicted"]))


def _flips(rows_a: list[Prediction], rows_b: list[Prediction]) -> dict:
    """Shared, labelled images that one run got right and the other wrong, most confident first."""
    by_id_a = {p.source_id: p for p in rows_a if p.true is not None}
    right_to_wrong, wrong_to_right, matched = [], [], 0
    for pb in rows_b:
        pa = by_id_a.get(pb.source_id)
        if pa is None or pb.true is None:
            continue
        matched += 1
        entry = {"source_id": pb.source_id, "filename": pb.filename or pa.filename, "true": pb.true,
                 "a_predicted": pa.predicted, "a_probability": pa.probability,
                 "b_predicted": pb.predicted, "b_probability": pb.probability, "b_index": pb.index}
        if pa.true != pb.true:
            entry["a_true"] = pa.true  # relabelled between the runs: judged against each run's own label
        if pa.correct and not pb.correct:
            right_to_wrong.append(entry)
        elif pb.correct and not pa.correct:
            wrong_to_right.append(entry)
    right_to_wrong.sort(key=lambda e: -e["b_probability"])
    wrong_to_right.sort(key=lambda e: -e["a_probability"])
    return {"matched": matched, "right_to_wrong": right_to_wrong, "wrong_to_right": wrong_to_right}


def flatten(value, prefix: str = "") -> dict[str, object]:
    """Nested dicts/lists -> {"a.b[0].c": leaf}, for a field-by-field spec diff."""
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key in sorted(value):
            out.update(flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value and any(isinstance(v, dict | list) for v in value):
        out = {}
        for i, item in enumerate(value):
            out.update(flatten(item, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def compare_specs(spec_a: dict, spec_b: dict) -> list[dict]:
    flat_a, flat_b = flatten(spec_a), flatten(spec_b)
    rows = [{"field": key, "a": flat_a.get(key), "b": flat_b.get(key), "differs": flat_a.get(key) != flat_b.get(key)}
            for key in sorted(set(flat_a) | set(flat_b))]
    return sorted(rows, key=lambda r: (not r["differs"], r["field"]))


def compare(a: dict, b: dict, preds_a: dict[str, list[Prediction]] | None = None,
            preds_b: dict[str, list[Prediction]] | None = None, spec_a: dict | None = None,
            spec_b: dict | None = None) -> dict:
    """Run A (the earlier, usually) against run B: every delta is B - A."""
    test_sets = compare_test_sets(a, b, preds_a, preds_b)
    notes = [test_sets["note"]]
    tasks_a = {t["task"]: t for t in a.get("tasks", [])}
    tasks = []
    for task_b in b.get("tasks", []):
        name = task_b["task"]
        task_a = tasks_a.get(name)
        if task_a is None:
            notes.append(f"task {name!r} is only in run B: not compared")
            continue
        if task_a.get("classes") != task_b.get("classes"):
            notes.append(f"task {name!r}: the class lists differ (A {task_a.get('classes')}, B "
                         f"{task_b.get('classes')}); classes are matched by name")
        overall = {m: _delta(task_a.get(m), task_b.get(m)) for m in OVERALL_METRICS}
        overall["macro_f1"] = _delta((task_a.get("macro_avg") or {}).get("f1"),
                                     (task_b.get("macro_avg") or {}).get("f1"))
        entry = {"task": name, "overall": overall, "classes": _per_class(task_a, task_b),
                 "confusion_changes": _confusion_changes(task_a, task_b)}
        if preds_a is not None and preds_b is not None:
            entry["flips"] = _flips(preds_a.get(name, []), preds_b.get(name, []))
        tasks.append(entry)
    notes += [f"task {name!r} is only in run A: not compared" for name in tasks_a
              if name not in {t["task"] for t in b.get("tasks", [])}]
    return {"a": _run_summary(a), "b": _run_summary(b), "test_sets": test_sets, "tasks": tasks,
            "specs": compare_specs(spec_a or {}, spec_b or {}), "notes": notes}


def _run_summary(evaluation: dict) -> dict:
    return {"job_id": evaluation.get("job_id"), "model_uri": (evaluation.get("model") or {}).get("uri"),
            "report_uri": evaluation.get("report_uri"), "split": evaluation.get("split"),
            "examples": evaluation.get("examples"),
            "blessed": (evaluation.get("blessing") or {}).get("blessed")}


# --------------------------------------------------------------------------- the folder

def plot_histories(history_a: list[dict] | None, history_b: list[dict] | None, path: Path) -> bool:
    """Both runs' training curves on one figure: A solid, B dashed. False when neither has one."""
    runs = [(name, style, h) for name, style, h in (("A", "-", history_a), ("B", "--", history_b))
            if isinstance(h, list) and h and all(isinstance(e, dict) for e in h)]
    if not runs:
        return False
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for name, style, history in runs:
        epochs = list(range(1, len(history) + 1))
        for key in ("loss", "val_loss"):
            points = [(e, h[key]) for e, h in zip(epochs, history, strict=True) if isinstance(h.get(key), int | float)]
            if points:
                ax_loss.plot(*zip(*points, strict=True), style, marker=".", label=f"{name} {key}")
        for key in ("accuracy", "val_accuracy"):
            points = [(e, h[key]) for e, h in zip(epochs, history, strict=True) if isinstance(h.get(key), int | float)]
            if points:
                ax_acc.plot(*zip(*points, strict=True), style, marker=".", label=f"{name} {key}")
    for ax, title in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_title(f"{title}: run A solid, run B dashed")
        ax.set_xlabel("epoch (both stages, in order)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write(out_dir: Path, comparison: dict, history_a: list[dict] | None = None,
          history_b: list[dict] | None = None) -> Path:
    """index.html and the curves plot, then comparison.json (last: a folder without it is incomplete).
    Thumbnails named in the flips' "thumbnail" entries must already be under out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if plot_histories(history_a, history_b, out_dir / "plots" / "training_curves.png"):
        comparison["training_curves"] = "plots/training_curves.png"
    (out_dir / INDEX_HTML).write_text(render_html(comparison), encoding="utf-8")
    path = out_dir / COMPARISON_JSON
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(comparison, indent=1))
    tmp.replace(path)
    return path


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;max-width:1200px;color:#222;
padding:0 1em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.up{color:#14591a}.down{color:#8a1111}
tr.differs td{background:#fff6d6}.note{color:#666;font-size:.9em}
.thumbs{display:flex;flex-wrap:wrap;gap:6px}.thumbs figure{margin:0;text-align:center;font-size:.75em;width:110px}
.thumbs img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;border:1px solid #ccc}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value, pct: bool = True) -> str:
    if not isinstance(value, int | float):
        return "–"
    return f"{100 * value:.2f}%" if pct else f"{value:.4f}"


def _delta_cell(d: dict, pct: bool = True) -> str:
    delta = d.get("delta")
    if delta is None:
        return "<td>–</td>"
    css = "up" if delta > 0 else "down" if delta < 0 else ""
    text = f"{100 * delta:+.2f} pts" if pct else f"{delta:+.4f}"
    return f"<td class='{css}'>{text}</td>"


def render_html(c: dict) -> str:
    a, b = c["a"], c["b"]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Compare {_e(a['job_id'])} → "
             f"{_e(b['job_id'])}</title><style>{_CSS}</style></head><body>",
             f"<h1>Run A {_e(a['job_id'])} → run B {_e(b['job_id'])}</h1>",
             "<p class='note'>Every delta is B − A.</p><ul>"]
    parts += [f"<li>{_e(note)}</li>" for note in c["notes"]]
    parts.append("</ul>")
    if c.get("training_curves"):
        parts.append(f"<h2>Training curves</h2><img src='{_e(c['training_curves'])}' alt='training curves' "
                     "style='max-width:100%'>")
    for t in c["tasks"]:
        parts.append(f"<h2>Task {_e(t['task'])}</h2><table><tr><th class='l'>metric</th><th>A</th><th>B</th>"
                     "<th>change</th></tr>")
        for metric, d in t["overall"].items():
            parts.append(f"<tr><td class='l'>{_e(metric)}</td><td>{_num(d['a'])}</td><td>{_num(d['b'])}</td>"
                         f"{_delta_cell(d)}</tr>")
        parts.append("</table><h3>Per class, largest change first</h3><table><tr><th class='l'>class</th>"
                     + "".join(f"<th>{m} A</th><th>{m} B</th><th>Δ</th>" for m in CLASS_METRICS)
                     + "<th>support A / B</th></tr>")
        for row in t["classes"]:
            cells = "".join(f"<td>{_num(row[m]['a'], False)}</td><td>{_num(row[m]['b'], False)}</td>"
                            f"{_delta_cell(row[m], False)}" for m in CLASS_METRICS)
            parts.append(f"<tr><td class='l'>{_e(row['label'])}</td>{cells}<td>{_e(row['support']['a'])} / "
                         f"{_e(row['support']['b'])}</td></tr>")
        parts.append("</table><h3>Confusion pairs that grew or shrank</h3>")
        if t["confusion_changes"]:
            parts.append("<table><tr><th class='l'>true</th><th class='l'>predicted as</th><th>A</th><th>B</th>"
                         "<th>change</th></tr>")
            for ch in t["confusion_changes"]:
                css = "down" if ch["delta"] > 0 else "up"  # more confusion is worse
                parts.append(f"<tr><td class='l'>{_e(ch['true'])}</td><td class='l'>{_e(ch['predicted'])}</td>"
                             f"<td>{ch['a']}</td><td>{ch['b']}</td><td class='{css}'>{ch['delta']:+d}</td></tr>")
            parts.append("</table>")
        else:
            parts.append("<p class='note'>No off-diagonal cell changed.</p>")
        flips = t.get("flips")
        if flips is None:
            parts.append("<p class='note'>Image-level flips: a run has no predictions.csv.</p>")
            continue
        for key, title in (("right_to_wrong", "Right in A, wrong in B"), ("wrong_to_right", "Wrong in A, right in B")):
            items = flips[key]
            parts.append(f"<h3>{title}: {len(items)} of {flips['matched']} matched images</h3><div class='thumbs'>")
            for f in items[:DEFAULT_FLIPS_SHOWN]:
                caption = (f"{f['true']}: A {f['a_predicted']} {f['a_probability']:.2f}, "
                           f"B {f['b_predicted']} {f['b_probability']:.2f}")
                image = (f"<img src='{_e(f['thumbnail'])}' alt='{_e(caption)}'>" if f.get("thumbnail")
                         else f"<span class='note'>{_e(f['source_id'][:12])}</span>")
                parts.append(f"<figure title='{_e(f.get('filename') or f['source_id'])}'>{image}"
                             f"<figcaption>{_e(caption)}</figcaption></figure>")
            parts.append("</div>")
    parts.append("<h2>Specs, differences first</h2>")
    if c["specs"]:
        parts.append("<table><tr><th class='l'>field</th><th class='l'>A</th><th class='l'>B</th></tr>")
        for row in c["specs"]:
            parts.append(f"<tr class='{'differs' if row['differs'] else ''}'><td class='l'>{_e(row['field'])}</td>"
                         f"<td class='l'>{_e(row['a'])}</td><td class='l'>{_e(row['b'])}</td></tr>")
        parts.append("</table>")
    else:
        parts.append("<p class='note'>Neither run's spec was found.</p>")
    parts.append(f"<p class='note'>All numbers: <a href='{COMPARISON_JSON}'>{COMPARISON_JSON}</a>.</p></body></html>")
    return "\n".join(parts)
