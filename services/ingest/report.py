"""The dataset report: the statistics table practitioners keep, as JSON (report.json, for tools and
GetDatasetReport) and as Markdown (report.md, for people).

report.json:
- `labels`: one row per (task, label): `path` (the label folder, or the list file that named it),
  `count` (unique valid images), `train_count` (unique, before balancing), `balanced_train_count`
  (lines in train.list), `val_count`, `test_count`, `bytes` (of the unique images), `rejected`
  (files of that label left out);
- `balance`: first-task counts before/after, the oversampling target, ratios before/after, caps;
- `images`: sizes (width/height min, max, mean, median), modes and formats of the unique images;
- `rejected`: every file left out with its reason, and `rejected_by_reason` (counts by reason code);
- `duplicates`: each group of identical files, the copy kept and the copies dropped;
  `duplicate_count` = dropped copies;
- `conflicts`: each image found under different labels (all its copies are left out, as a suspected
  mislabel), with the labels and paths; `label_conflict_count` = such images.
"""

from __future__ import annotations

from classforge.v1 import ingest_service_pb2 as pb
from services.ingest.names import printable


def balance_section(task: str, names: list[str], balanced) -> dict:
    """The report's "balance" entry: the first task's class counts before and after oversampling the
    training split (`balanced`: balance.Balanced), by class name."""
    return {
        "task": task,
        "before": {names[k]: v for k, v in balanced.before.items()},
        "after": {names[k]: v for k, v in balanced.after.items()},
        "target": balanced.target,
        "capped": {names[k]: v for k, v in balanced.capped.items()},
        "ratio_before": round(balanced.ratio_before, 4),
        "ratio_after": round(balanced.ratio_after, 4),
    }


def render_markdown(report: dict) -> str:
    lines = [f"# Dataset `{report['dataset_id']}`", ""]
    counts = report["counts"]
    lines += [
        f"- source: {_source_text(report.get('source', {}))}",
        f"- files seen: {counts['files_seen']}; valid unique images: {counts['images']}; "
        f"rejected: {counts['rejected']} (duplicates {report['duplicate_count']}, "
        f"label conflicts {report['label_conflict_count']})",
        f"- list lines: train {counts['train']} (from {counts['train_unique']} unique), "
        f"val {counts['val']}, test {counts['test']}",
        "- options: " + ", ".join(f"{k}={v}" for k, v in report["options"].items()),
        "",
    ]
    for task in report["tasks"]:
        rows = [r for r in report["labels"] if r["task"] == task["name"]]
        lines += [f"## Task `{task['name']}` ({len(task['classes'])} classes)", "",
                  "| id | label | path | count | train | balanced train | val | test | bytes | rejected |",
                  "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for row in rows:
            lines.append(f"| {row['class_id']} | {_cell(row['label'])} | {_cell(row['path'])} | {row['count']} | "
                         f"{row['train_count']} | {row['balanced_train_count']} | {row['val_count']} | "
                         f"{row['test_count']} | {row['bytes']} | {row['rejected']} |")
        lines.append("")
    balance = report["balance"]
    lines += [f"## Balance (task `{balance['task']}`, training split only)", "",
              f"- largest/smallest class: {balance['ratio_before']:.2f} before, {balance['ratio_after']:.2f} after "
              f"(bound {report['options']['max_class_ratio']:g})",
              _balance_text(balance),
              ""]
    images = report["images"]
    if images["count"]:
        lines += ["## Images", "",
                  f"- width {images['width']['min']}–{images['width']['max']} (mean {images['width']['mean']:.1f}), "
                  f"height {images['height']['min']}–{images['height']['max']} "
                  f"(mean {images['height']['mean']:.1f}); {images['bytes']} bytes",
                  "- formats: " + ", ".join(f"{k} {v}" for k, v in images["formats"].items()),
                  "- modes: " + ", ".join(f"{k} {v}" for k, v in images["modes"].items()),
                  ""]
    if report["rejected"]:
        lines += ["## Rejected files", "", "| reason | files |", "|---|---:|"]
        lines += [f"| {code} | {n} |" for code, n in report["rejected_by_reason"].items()]
        lines += ["", "| path | reason |", "|---|---|"]
        lines += [f"| {_cell(r['path'])} | {_cell(r['reason'])} |" for r in report["rejected"]]
        lines.append("")
    if report["conflicts"]:
        lines += ["## Label conflicts (suspected mislabels, left out)", "", "| sha256 | labels | paths |",
                  "|---|---|---|"]
        for c in report["conflicts"]:
            labels = "; ".join(f"{task}: {', '.join(values)}" for task, values in c["labels"].items())
            lines.append(f"| {c['sha256'][:12]} | {_cell(labels)} | {_cell(', '.join(c['paths']))} |")
        lines.append("")
    if report["duplicates"]:
        lines += ["## Duplicates (one copy kept)", "", "| sha256 | kept | dropped |", "|---|---|---|"]
        for d in report["duplicates"]:
            lines.append(f"| {d['sha256'][:12]} | {_cell(d['kept'])} | {_cell(', '.join(d['dropped']))} |")
        lines.append("")
    return "\n".join(lines)


def _balance_text(balance: dict) -> str:
    raised = [k for k, v in balance["after"].items() if v > balance["before"][k]]
    parts = [f"oversampled to {balance['target']}: {', '.join(raised)}" if raised else "no class was oversampled"]
    if balance["capped"]:
        parts.append("undersampled to the cap: " + ", ".join(f"{k} ({v})" for k, v in balance["capped"].items()))
    return "- " + "; ".join(parts)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _source_text(source: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in source.items()) or "(unknown)"


def to_proto(report: dict) -> pb.DatasetReport:
    return pb.DatasetReport(
        dataset_id=report["dataset_id"],
        labels=[pb.LabelStatistics(task=r["task"], label=r["label"], count=r["count"], train_count=r["train_count"],
                                   balanced_train_count=r["balanced_train_count"], val_count=r["val_count"],
                                   test_count=r["test_count"], bytes=r["bytes"])
                for r in report["labels"]],
        # printable: protobuf refuses strings that are not valid UTF-8 (a report is written with text only;
        # this keeps GetDatasetReport working whatever a report holds)
        rejected=[pb.RejectedFile(path=printable(r["path"]), reason=printable(r["reason"]))
                  for r in report["rejected"]],
        duplicate_count=report["duplicate_count"],
        label_conflict_count=report["label_conflict_count"],
        ratio_before=report["balance"]["ratio_before"],
        ratio_after=report["balance"]["ratio_after"],
    )
