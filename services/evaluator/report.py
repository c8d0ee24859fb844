"""The evaluation report, a folder that opens offline:

- `plots/`: per task the confusion matrix raw and row-normalised (axes labelled; the title says rows
  are the ground truth), per-class precision/recall/F1 bars, the reliability diagram (calibration),
  and the training curves from history.json (total loss against its regularisation part) when the
  trainer's history is there;
- `index.html`: every number, plot and image of the folder, with inline CSS, no script, and only
  relative links (thumbnails are the gallery/, mislabels/, cams/ files themselves);
- `evaluation.json`: every number, written **last**: a report folder without it is incomplete.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402

from services.common import artefacts  # noqa: E402
from services.evaluator.metrics import CONFUSION_AXES  # noqa: E402

EVALUATION_JSON = artefacts.EVALUATION_JSON
INDEX_HTML = "index.html"


def _slug(task: str, multi: bool) -> str:
    return f"{task}_" if multi else ""


def plot_confusion(task: dict, path: Path, normalised: bool) -> None:
    cm = task["confusion_matrix"]
    values = np.asarray(cm["row_normalised"] if normalised else cm["counts"], dtype=float)
    labels = cm["labels"]
    side = min(max(5.0, 0.45 * len(labels) + 2.5), 30.0)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalised else max(values.max(), 1))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(labels)), labels=labels, rotation=90 if len(labels) > 6 else 0)
    ax.set_yticks(range(len(labels)), labels=labels)
    ax.set_xlabel("predicted class (columns)")
    ax.set_ylabel("true class (rows)")
    kind = "row-normalised (diagonal = recall)" if normalised else "counts"
    ax.set_title(f"{task['task']}: confusion matrix, {kind}\n{CONFUSION_AXES}", fontsize=8)
    if len(labels) <= 20:
        threshold = values.max() / 2 if values.size else 0
        for i in range(len(labels)):
            for j in range(len(labels)):
                text = f"{values[i, j]:.2f}" if normalised else f"{int(values[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if values[i, j] > threshold else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_per_class(task: dict, path: Path) -> None:
    rows = task["per_class"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.5 * len(rows) + 2), 30.0), 4))
    for offset, key in ((-0.27, "precision"), (0.0, "recall"), (0.27, "f1")):
        ax.bar(x + offset, [r[key] for r in rows], width=0.27, label=key)
    ax.set_xticks(x, labels=[r["label"] for r in rows], rotation=90 if len(rows) > 6 else 0)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{task['task']}: per-class precision, recall and F1")
    ax.legend(loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_reliability(task: dict, path: Path) -> None:
    calibration = task["calibration"]
    rows = [r for r in calibration["reliability"] if r["count"]]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    width = 1 / calibration["bins"]
    ax.bar([r["lower"] for r in rows], [r["accuracy"] for r in rows], width=width, align="edge",
           edgecolor="black", alpha=0.7, label="accuracy in bin")
    ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], "o", color="red", markersize=3,
            label="mean confidence")
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{task['task']}: reliability, ECE {calibration['expected_calibration_error']:.4f}", fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_history(history: list[dict], path: Path) -> bool:
    """Training curves from the trainer's history.json (a list of per-epoch dicts: epoch, loss,
    data_loss, regularization_loss, val_loss, accuracy, val_accuracy, …). False when it has no curve."""
    if not isinstance(history, list) or not history or not all(isinstance(h, dict) for h in history):
        return False
    epochs = [h.get("epoch", i) for i, h in enumerate(history)]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    drawn = False
    for key, label, style in (("loss", "total loss (train)", "-"), ("data_loss", "data loss (train)", "-"),
                              ("regularization_loss", "regularisation loss (train)", ":"),
                              ("val_loss", "validation loss", "--")):
        points = [(e, h[key]) for e, h in zip(epochs, history, strict=True) if isinstance(h.get(key), int | float)]
        if points:
            ax_loss.plot(*zip(*points, strict=True), style, marker=".", label=label)
            drawn = True
    for key in sorted({k for h in history for k in h if "acc" in k}):
        points = [(e, h[key]) for e, h in zip(epochs, history, strict=True) if isinstance(h.get(key), int | float)]
        if points:
            ax_acc.plot(*zip(*points, strict=True), marker=".", label=key)
            drawn = True
    for ax, title in ((ax_loss, "loss: total vs regularisation"), (ax_acc, "accuracy")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    if drawn:
        fig.savefig(path, dpi=90)
    plt.close(fig)
    return drawn


def write_plots(out_dir: Path, tasks: list[dict], history: list[dict] | None) -> dict[str, str]:
    plots_dir = out_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    multi = len(tasks) > 1
    plots: dict[str, str] = {}
    for task in tasks:
        slug = _slug(task["task"], multi)
        for name, draw in (("confusion_matrix", lambda t, p: plot_confusion(t, p, False)),
                           ("confusion_matrix_normalised", lambda t, p: plot_confusion(t, p, True)),
                           ("per_class", plot_per_class), ("reliability", plot_reliability)):
            relative = f"plots/{slug}{name}.png"
            draw(task, out_dir / relative)
            plots[f"{slug}{name}"] = relative
    if history and plot_history(history, plots_dir / "training_curves.png"):
        plots["training_curves"] = "plots/training_curves.png"
    return plots


def write(out_dir: Path, evaluation: dict, history: list[dict] | None = None) -> Path:
    """Plots, index.html, then evaluation.json (last). `evaluation` is the whole JSON document the
    domain assembled (tasks, blessing, model, records …); its "plots" entry is filled here."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluation["plots"] = write_plots(out_dir, evaluation["tasks"], history)
    (out_dir / INDEX_HTML).write_text(render_html(evaluation), encoding="utf-8")
    path = out_dir / EVALUATION_JSON
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(evaluation, indent=1, default=_json_default))
    tmp.replace(path)
    return path


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.5em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}
.verdict{font-size:1.2em;font-weight:bold;padding:.5em 1em;border-radius:6px;display:inline-block}
.blessed{background:#e3f6e3;color:#14591a}.rejected{background:#fbe4e4;color:#8a1111}
.reasons{font-family:ui-monospace,monospace;background:#fafafa;border:1px solid #eee;padding:.6em;
white-space:pre-wrap}
.thumbs{display:flex;flex-wrap:wrap;gap:6px}.thumbs figure{margin:0;text-align:center;font-size:.75em}
.thumbs img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;border:1px solid #ccc;
background:#fff}
.plots img{max-width:100%;margin:.4em 0}.note{color:#666;font-size:.9em}
details{margin:.3em 0}summary{cursor:pointer}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _img(src: str, caption: str, title: str = "") -> str:
    return (f'<figure><a href="{_e(src)}"><img src="{_e(src)}" alt="{_e(caption)}" title="{_e(title or caption)}">'
            f'</a><figcaption>{_e(caption)}</figcaption></figure>')


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def render_html(ev: dict) -> str:
    blessing = ev.get("blessing", {})
    blessed = blessing.get("blessed", False)
    multi = len(ev["tasks"]) > 1
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Evaluation {_e(ev.get('job_id', ''))}"
             f"</title><style>{_CSS}</style></head><body>",
             f"<h1>Evaluation of {_e(ev.get('model', {}).get('uri') or ev.get('job_id', 'model'))}</h1>",
             f"<p class='note'>job {_e(ev.get('job_id', ''))} · records {_e(ev.get('records', {}).get('uri', ''))} · "
             f"split <b>{_e(ev.get('split', ''))}</b> · {ev.get('examples', 0)} images · "
             f"{ev.get('images_per_second', 0):.1f} images/s</p>",
             f"<p><span class='verdict {'blessed' if blessed else 'rejected'}'>"
             f"{'BLESSED' if blessed else 'NOT BLESSED'}</span></p>",
             f"<div class='reasons'>{_e(chr(10).join(blessing.get('reasons', [])))}</div>"]
    if ev.get("baseline"):
        b = ev["baseline"]
        parts.append(f"<p class='note'>Baseline: job {_e(b.get('job_id'))} ({_e(b.get('source'))})</p>")
    plots = ev.get("plots", {})
    if "training_curves" in plots:
        parts.append("<h2>Training curves</h2><div class='plots'>"
                     f"<img src='{_e(plots['training_curves'])}' alt='training curves'></div>")
    for task in ev["tasks"]:
        parts.append(_task_html(task, plots, _slug(task["task"], multi), multi))
    parts.append(_duplicates_html(ev.get("duplicates", [])))
    parts.append(f"<p class='note'>Grad-CAM: {_e(ev.get('cam_status', ''))}. All numbers: "
                 f"<a href='{EVALUATION_JSON}'>{EVALUATION_JSON}</a>.</p></body></html>")
    return "\n".join(parts)


def _task_html(t: dict, plots: dict, slug: str, multi: bool) -> str:
    out = [f"<h2>{'Task ' + _e(t['task']) if multi else 'Metrics'}</h2>",
           "<table><tr><th class='l'>metric</th><th>value</th></tr>"]
    rows = [("examples", t["examples"]), ("accuracy", _pct(t["accuracy"])),
            ("balanced accuracy", _pct(t["balanced_accuracy"])),
            (f"top-{t['top_k']} accuracy", _pct(t["top_k_accuracy"])),
            ("macro precision / recall / F1",
             " / ".join(f"{t['macro_avg'][k]:.4f}" for k in ("precision", "recall", "f1"))),
            ("weighted precision / recall / F1",
             " / ".join(f"{t['weighted_avg'][k]:.4f}" for k in ("precision", "recall", "f1"))),
            (f"expected calibration error ({t['calibration']['bins']} equal-width bins)",
             f"{t['calibration']['expected_calibration_error']:.4f}")]
    out += [f"<tr><td class='l'>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows]
    out.append("</table><div class='plots'>")
    for name in ("confusion_matrix", "confusion_matrix_normalised", "per_class", "reliability"):
        if f"{slug}{name}" in plots:
            out.append(f"<img src='{_e(plots[slug + name])}' alt='{_e(name)}'>")
    out.append(f"</div><p class='note'>Confusion matrices: {_e(CONFUSION_AXES)}.</p>")
    out.append("<h3>Per class</h3><table><tr><th class='l'>class</th><th>precision</th><th>recall</th><th>F1</th>"
               "<th>support</th></tr>")
    for c in t["per_class"]:
        out.append(f"<tr><td class='l'>{_e(c['label'])}</td><td>{c['precision']:.4f}</td><td>{c['recall']:.4f}</td>"
                   f"<td>{c['f1']:.4f}</td><td>{c['support']}</td></tr>")
    out.append("</table><h3>Most confused pairs</h3>")
    if t["most_confused"]:
        out.append("<table><tr><th class='l'>true</th><th class='l'>predicted as</th><th>images</th>"
                   "<th>share of true class</th></tr>")
        for p in t["most_confused"]:
            out.append(f"<tr><td class='l'>{_e(p['true'])}</td><td class='l'>{_e(p['predicted'])}</td>"
                       f"<td>{p['count']}</td><td>{_pct(p['rate'])}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p class='note'>No confusion: every image was predicted as its class.</p>")
    out.append(_gallery_html(t))
    mislabels = t.get("mislabels", {})
    if mislabels:
        out.append(f"<h3>Suspected mislabels</h3><p class='note'>{_e(mislabels['rule'])}; "
                   f"{mislabels['total']} in all, the first {len(mislabels['ranked'])} shown.</p>")
        if mislabels.get("review_file"):
            out.append(f"<p class='note'>Every wrong prediction ({mislabels['review_rows']} rows of all tasks) is in "
                       f"<a href='{_e(mislabels['review_file'])}'>{_e(mislabels['review_file'])}</a>: fill in its "
                       f"decision column (keep, drop, relabel:&lt;class&gt;) and run <code>classforge dataset "
                       f"relabel</code> to make a new dataset version.</p>")
        out.append("<div class='thumbs'>")
        out += [_img(m["thumbnail"], f"#{m['rank']} {m['probability']:.3f}: labelled {m['true']}, model says "
                                     f"{m['predicted']}", m.get("filename") or m["source_id"])
                for m in mislabels["ranked"]]
        out.append("</div>")
    if t.get("cams"):
        out.append("<h3>Grad-CAM</h3><p class='note'>Heat map of the evidence for the predicted class over the "
                   f"last convolutional feature map ({_e(t['cams'][0]['layer'])}).</p><div class='thumbs'>")
        out += [_img(c["path"], f"{c['kind']}: {c['true']} → {c['predicted']} {c['probability']:.3f}")
                for c in t["cams"]]
        out.append("</div>")
    return "\n".join(out)


def _gallery_html(t: dict) -> str:
    entries = t.get("gallery", [])
    if not entries:
        return ""
    classes = t["classes"]
    cells: dict[tuple[int, int], list[dict]] = {}
    for entry in entries:
        cells.setdefault((entry["true"], entry["predicted"]), []).append(entry)
    out = ["<h3>Error gallery</h3><p class='note'>Folders gallery/&lt;true&gt;/&lt;predicted&gt;/; file names start "
           "with the probability of the predicted class. Wrong cells first, fullest first.</p>"]
    order = sorted(cells, key=lambda k: (k[0] == k[1], -len(cells[k]), k))
    for true, predicted in order:
        items = cells[(true, predicted)]
        label = f"true {classes[true]} → predicted {classes[predicted]} ({len(items)} shown)"
        is_open = " open" if true != predicted else ""
        out.append(f"<details{is_open}><summary>{_e(label)}</summary><div class='thumbs'>")
        out += [_img(e["path"], f"{e['probability']:.3f}", e.get("filename") or e["source_id"]) for e in items]
        out.append("</div></details>")
    return "\n".join(out)


def _duplicates_html(duplicates: list[dict]) -> str:
    out = ["<h2>Duplicates with different labels</h2>"]
    if not duplicates:
        out.append("<p class='note'>None found (exact: same source id; near: difference hash within the "
                   "configured Hamming distance).</p>")
        return "\n".join(out)
    out.append("<table><tr><th class='l'>kind</th><th>distance</th><th class='l'>image A</th>"
               "<th class='l'>image B</th></tr>")
    for d in duplicates:
        cells = []
        for side in (d["a"], d["b"]):
            labels = ", ".join(f"{k}={v}" for k, v in side["labels"].items())
            thumb = (f"<div class='thumbs'>{_img(side['thumbnail'], labels)}</div>" if side.get("thumbnail")
                     else _e(labels))
            cells.append(f"<td class='l'>{thumb}<span class='note'>{_e(side['source_id'][:12])}</span></td>")
        out.append(f"<tr><td class='l'>{_e(d['kind'])}</td><td>{d['distance']}</td>{''.join(cells)}</tr>")
    out.append("</table>")
    return "\n".join(out)
