"""A new dataset version from a reviewed mislabels.csv (services/common/mislabel_review.py).

Every row names an image by its id (the sha256 in its key, `images/ab/<sha256>.png`) and carries a
decision: empty or `keep` (no change), `drop` (the image leaves every split) or `relabel:<class>` (a
class the row's task already has). The new version:

- keeps each image in the split it had in the parent, so a test set stays comparable across versions;
  the training split is re-balanced with the parent's options (seed, max ratio, cap);
- has the parent's classes (a class that would lose its last image is refused: class ids must stay
  the ids the earlier models were trained with);
- records in its manifest the parent (`parent.dataset_id`, the sha256 of the parent's manifest), the
  corrections applied (each with its line), and the per-label count diff.

All rows are checked before anything is written: every bad row (unknown image id, unknown task or
class, malformed decision, two rows disagreeing about one image) is listed with its line number in
one InvalidArgument, and no version is written. No gRPC, no Kafka: the ingest domain and the local
`classforge dataset relabel` both call `relabel_dataset`.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath

from PIL import Image

from services.common import image_hash
from services.common import mislabel_review as review
from services.common.dataset_options import IngestOptions
from services.common.errors import FailedPrecondition, InvalidArgument, shown
from services.common.records import SPLITS
from services.common.storage import ObjectNotFound, ObjectStore
from services.ingest.balance import Balance, Example, balance
from services.ingest.prepare import LIST_FILES, MANIFEST_FORMAT, Prepared, read_json
from services.ingest.report import balance_section, render_markdown
from services.ingest.validation import CONTENT_TYPES, reason_code

MAX_LISTED_PROBLEMS = 50
DROPPED_REASON = "dropped-in-review"


@dataclass(frozen=True)
class Correction:
    line: int
    image_id: str
    task: str
    decision: str  # "drop" or "relabel"
    old_label: str | None
    new_label: str | None = None

    def as_dict(self) -> dict:
        return {"line": self.line, "image_id": self.image_id, "task": self.task, "decision": self.decision,
                "from": self.old_label, "to": self.new_label}


def version_id(parent: dict, corrections: list[Correction]) -> str:
    """`<root>-v<n>-<digest>`: the same parent and the same corrections give the same id (a retried relabel
    reuses the version), while different reviews of one parent never collide."""
    root = parent.get("lineage", {}).get("root_dataset_id", parent["dataset_id"])
    version = parent.get("lineage", {}).get("version", 1) + 1
    digest = hashlib.sha256(json.dumps([parent["dataset_id"], [[c.image_id, c.task, c.decision, c.new_label]
                                                               for c in corrections]]).encode()).hexdigest()[:10]
    suffix = f"-v{version}-{digest}"
    return root[:120 - len(suffix)] + suffix


def parse_corrections(text: str, tasks: list[dict], images: dict[str, tuple[str, Example]],
                      field: str = "corrections") -> tuple[list[Correction], int]:
    """The corrections that change something, and the number of rows kept as they are. InvalidArgument
    listing every bad row with its line number."""
    header, rows = review.read(text)
    missing = [c for c in review.REQUIRED_COLUMNS if c not in header]
    if missing:
        raise InvalidArgument(field, f"line 1: the header {shown(','.join(header))} lacks the column(s) "
                                     f"{', '.join(missing)}; expected the columns of mislabels.csv "
                                     f"({','.join(review.COLUMNS)})")
    task_index = {t["name"]: i for i, t in enumerate(tasks)}
    problems: list[str] = []
    corrections: dict[tuple[str, str], Correction] = {}
    decided: dict[tuple[str, str], tuple[int, str]] = {}
    kept = 0
    for line, row in rows:
        image_id, decision = row["image_id"].lower(), row["decision"]
        task = row.get("task") or tasks[0]["name"]
        bad = []
        if "__extra__" in row:
            bad.append(f"{len(header) + len(row['__extra__'])} values for {len(header)} columns")
        if image_id not in images:
            bad.append(f"unknown image id {shown(row['image_id'])}: no image of the dataset has it")
        if task not in task_index:
            bad.append(f"unknown task {shown(task)} (tasks: {', '.join(task_index)})")
        lowered = decision.lower()
        new_label = None
        if lowered in ("", review.KEEP, review.DROP):
            pass
        elif lowered.startswith(review.RELABEL_PREFIX):
            new_label = decision[len(review.RELABEL_PREFIX):].strip()
            classes = tasks[task_index[task]]["classes"] if task in task_index else None
            if not new_label:
                bad.append("relabel: names no class (write relabel:<class>)")
            elif classes is not None and new_label not in classes:
                bad.append(f"unknown class {shown(new_label)} for task {shown(task)} "
                           f"(classes: {', '.join(classes)})")
        else:
            bad.append(f"malformed decision {shown(decision)}: expected keep, drop, relabel:<class> or empty")
        if bad:
            problems.append(f"line {line}: " + "; ".join(bad))
            continue
        key = (image_id, task)
        canonical = lowered if new_label is None else f"relabel:{new_label}"
        canonical = canonical or review.KEEP
        if key in decided and decided[key][1] != canonical:
            problems.append(f"line {line}: image {image_id[:12]}… task {task!r} was already given "
                            f"{decided[key][1]!r} on line {decided[key][0]}; one decision per image")
            continue
        decided.setdefault(key, (line, canonical))
        split, example = images[image_id]
        old_id = example.labels[task_index[task]]
        old_label = tasks[task_index[task]]["classes"][old_id] if old_id >= 0 else None
        if canonical == review.DROP:
            corrections[key] = Correction(line, image_id, task, "drop", old_label)
        elif new_label is not None and new_label != old_label:
            corrections[key] = Correction(line, image_id, task, "relabel", old_label, new_label)
        else:
            kept += 1
    if problems:
        listed = problems[:MAX_LISTED_PROBLEMS]
        more = f"; and {len(problems) - len(listed)} more" if len(problems) > len(listed) else ""
        raise InvalidArgument(field, f"{len(problems)} bad row(s), nothing was applied: " + "; ".join(listed) + more)
    return sorted(corrections.values(), key=lambda c: c.line), kept


@dataclass
class RelabelPlan:
    """A checked review applied in memory: what `write_version` writes."""

    source: ObjectStore
    source_prefix: str
    parent: dict
    tasks: list[dict]
    options: IngestOptions
    splits: dict[str, list[Example]]  # unique images per split, each where it was in the parent
    train: list[Example]  # the re-balanced training stream
    balanced: Balance
    corrections: list[Correction]
    kept: int
    dropped: dict[str, Correction]
    before: dict[str, Counter]
    after: dict[str, Counter]
    corrections_text: str
    origin: str

    @property
    def default_id(self) -> str:
        return version_id(self.parent, self.corrections)


def plan_relabel(source: ObjectStore, source_prefix: str, corrections_text: str, *, field: str = "corrections",
                 origin: str = "") -> RelabelPlan:
    """Reads the parent dataset under `source_prefix` and checks the review against it; nothing is
    written. InvalidArgument for bad rows, FailedPrecondition when nothing would change or a class would
    lose its last image. `origin`: where the corrections came from, for the manifest."""
    parent = read_json(source, source_prefix + "manifest.json")
    tasks = parent["tasks"]
    split_of: dict[str, str] = {}
    images: dict[str, tuple[str, Example]] = {}
    for split in SPLITS:
        for line in source.get_bytes(source_prefix + f"{split}.list").decode("utf-8").splitlines():
            if not line.strip():
                continue
            path, *labels = line.rsplit(" ", len(tasks))
            image_id = PurePosixPath(path).stem.lower()
            if image_id not in images:  # train.list repeats oversampled images
                images[image_id] = (split, Example(path, tuple(int(v) for v in labels)))
                split_of[image_id] = split
    corrections, kept = parse_corrections(corrections_text, tasks, images, field)
    if not corrections:
        raise FailedPrecondition(f"{field}: no row changes anything ({kept} kept as they are): the dataset "
                                 f"{parent['dataset_id']!r} stays as it is, no new version is written")

    task_index = {t["name"]: i for i, t in enumerate(tasks)}
    dropped: dict[str, Correction] = {}
    new_examples = {image_id: example for image_id, (_, example) in images.items()}
    for c in corrections:
        if c.decision == "drop":
            dropped[c.image_id] = c
            continue
        t = task_index[c.task]
        example = new_examples[c.image_id]
        labels = list(example.labels)
        labels[t] = tasks[t]["classes"].index(c.new_label)
        new_examples[c.image_id] = Example(example.path, tuple(labels))
    for image_id in dropped:
        del new_examples[image_id]

    before = _label_counts(tasks, (example for _, example in images.values()))
    after = _label_counts(tasks, new_examples.values())
    emptied = [f"{task['name']}/{label}" if len(tasks) > 1 else label
               for task in tasks for label in task["classes"] if not after[task["name"]][label]]
    if emptied:
        raise FailedPrecondition(f"{field}: the corrections would leave no image of {', '.join(map(repr, emptied))}; "
                                 f"a version keeps its parent's classes, so keep at least one image of each")

    options = IngestOptions(**parent["options"])
    splits = {split: sorted(e for i, e in new_examples.items() if split_of[i] == split) for split in SPLITS}
    train, balanced = balance(splits["train"], options.max_class_ratio, options.seed, options.max_per_class)
    return RelabelPlan(source, source_prefix, parent, tasks, options, splits, train, balanced, corrections, kept,
                       dropped, before, after, corrections_text, origin)


def write_version(plan: RelabelPlan, target: ObjectStore, target_prefix: str, dataset_id: str = "") -> Prepared:
    """Writes the new version under `target_prefix` ("" or ending in '/'), manifest.json last; on any
    failure what was written is removed. `dataset_id` "" = the plan's default id."""
    started = time.perf_counter()
    try:
        return _write(plan, target, target_prefix, dataset_id or plan.default_id, started)
    except BaseException:
        _remove_written(target, target_prefix)
        raise


def _identity(corrections: list[dict]) -> list[tuple]:
    return sorted((c["image_id"], c["task"], c["decision"], c["to"]) for c in corrections)


def is_version_of(manifest: dict, parent_id: str, plan: RelabelPlan) -> bool:
    """Whether `manifest` is the version `plan` would write (the same parent, the same corrections)."""
    return (manifest.get("parent", {}).get("dataset_id") == parent_id
            and _identity(manifest.get("corrections", {}).get("applied", []))
            == _identity([c.as_dict() for c in plan.corrections]))


def _remove_written(target: ObjectStore, prefix: str) -> None:
    if prefix:
        target.delete_prefix(prefix)
        return
    for name in ("manifest.json", "labels.json", *LIST_FILES, image_hash.HASHES_FILE, "report.json", "report.md"):
        target.delete(name)
    target.delete_prefix("images/")


def _label_counts(tasks: list[dict], examples) -> dict[str, Counter]:
    counts = {task["name"]: Counter({label: 0 for label in task["classes"]}) for task in tasks}
    for example in examples:
        for t, task in enumerate(tasks):
            if example.labels[t] >= 0:
                counts[task["name"]][task["classes"][example.labels[t]]] += 1
    return counts


def _copy_images(plan: RelabelPlan, target: ObjectStore, target_prefix: str) -> dict[str, dict]:
    """Copies the version's images from the parent; returns each one's size, format and mode (the report's
    image statistics) by path."""
    source, source_prefix = plan.source, plan.source_prefix

    def copy(example: Example) -> tuple[str, dict]:
        data = source.get_bytes(source_prefix + example.path)
        ext = PurePosixPath(example.path).suffix.lstrip(".")
        target.put_bytes(target_prefix + example.path, data, CONTENT_TYPES.get(ext, "application/octet-stream"))
        with Image.open(io.BytesIO(data)) as image:  # the header only: size, format, mode
            return example.path, {"bytes": len(data), "width": image.width, "height": image.height,
                                  "format": image.format or ext, "mode": image.mode}

    # As in prepare: a remote store answers each call after a round trip, so several go at once.
    threads = target.useful_write_threads
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ingest-relabel") as pool:
        return dict(pool.map(copy, [e for split in SPLITS for e in plan.splits[split]]))


def _write(plan: RelabelPlan, target: ObjectStore, target_prefix: str, new_id: str, started: float) -> Prepared:
    source, source_prefix, parent, tasks, splits = plan.source, plan.source_prefix, plan.parent, plan.tasks, plan.splits
    train, options = plan.train, plan.options
    corrections, dropped = plan.corrections, plan.dropped
    before, after = plan.before, plan.after
    sizes = _copy_images(plan, target, target_prefix)
    files: dict[str, dict] = {}

    def put_text(name: str, text: str, content_type: str) -> None:
        info = target.put_bytes(target_prefix + name, text.encode("utf-8"), content_type)
        files[name] = {"sha256": info.sha256, "bytes": info.size}

    labels_doc = {"tasks": tasks}
    put_text("labels.json", json.dumps(labels_doc, indent=2) + "\n", "application/json")
    for name, rows in zip(LIST_FILES, (train, splits["val"], splits["test"]), strict=True):
        put_text(name, "".join(example.line() + "\n" for example in rows), "text/plain; charset=utf-8")
        files[name]["lines"] = len(rows)
    try:  # the parent's difference hashes of the images kept (a parent made before hashes.tsv has none)
        parent_hashes = image_hash.parse_hashes(source.get_bytes(source_prefix + image_hash.HASHES_FILE))
    except (ObjectNotFound, ValueError, UnicodeDecodeError):
        parent_hashes = {}
    if parent_hashes:
        kept = {PurePosixPath(path).stem.lower() for path in sizes}
        put_text(image_hash.HASHES_FILE, image_hash.format_hashes(
            (sha, value) for sha, value in parent_hashes.items() if sha in kept), image_hash.HASHES_CONTENT_TYPE)

    parent_lineage = parent.get("lineage", {})
    lineage = {"root_dataset_id": parent_lineage.get("root_dataset_id", parent["dataset_id"]),
               "version": parent_lineage.get("version", 1) + 1}
    parent_ref = {"dataset_id": parent["dataset_id"],
                  "manifest_sha256": hashlib.sha256(source.get_bytes(source_prefix + "manifest.json")).hexdigest()}
    diff = {task["name"]: {label: {"before": before[task["name"]][label], "after": after[task["name"]][label],
                                   "change": after[task["name"]][label] - before[task["name"]][label]}
                           for label in task["classes"]} for task in tasks}
    unique = [e for split in SPLITS for e in splits[split]]
    counts = {**parent["counts"], "images": len(unique), "train": len(train), "train_unique": len(splits["train"]),
              "val": len(splits["val"]), "test": len(splits["test"]),
              "rejected": parent["counts"]["rejected"] + len(dropped)}
    corrections_doc = {"origin": plan.origin, "sha256": hashlib.sha256(plan.corrections_text.encode()).hexdigest(),
                       "relabeled": sum(c.decision == "relabel" for c in corrections), "dropped": len(dropped),
                       "kept": plan.kept, "applied": [c.as_dict() for c in corrections]}
    source_doc = {"kind": "relabel", "parent_dataset_id": parent["dataset_id"],
                  "corrections_sha256": corrections_doc["sha256"]}
    report = _report(plan, new_id, source_doc, sizes, counts, corrections_doc, diff)
    put_text("report.json", json.dumps(report, indent=2) + "\n", "application/json")
    put_text("report.md", render_markdown(report) + _corrections_markdown(corrections_doc, diff),
             "text/markdown; charset=utf-8")
    manifest = {
        "format": MANIFEST_FORMAT,
        "dataset_id": new_id,
        "created_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "source": source_doc,
        "options": options.as_dict(),
        "tasks": tasks,
        "counts": counts,
        "images": {"count": len(unique), "bytes": sum(s["bytes"] for s in sizes.values()), "prefix": "images/"},
        "files": files,
        "parent": parent_ref,
        "lineage": lineage,
        "corrections": corrections_doc,
        "label_counts_diff": diff,
        "duration_seconds": round(time.perf_counter() - started, 3),
    }
    target.put_bytes(target_prefix + "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode(),
                     "application/json")
    return Prepared(new_id, target_prefix, manifest, report)


def _report(plan: RelabelPlan, new_id: str, source_doc: dict, sizes: dict[str, dict], counts: dict,
            corrections_doc: dict, diff: dict) -> dict:
    """The parent's report.json with this version's numbers; rejects and duplicates of the original
    source stay listed, and every dropped image joins the rejects with the review line that dropped it."""
    tasks, splits, dropped = plan.tasks, plan.splits, plan.dropped
    parent_report = read_json(plan.source, plan.source_prefix + "report.json")
    dropped_per_label = Counter((c.task, c.old_label) for c in dropped.values())
    unique = [e for split in SPLITS for e in splits[split]]
    old = {(r["task"], r["label"]): r for r in parent_report["labels"]}
    rows = []
    for t, task in enumerate(tasks):
        def per_class(examples, t=t) -> Counter:
            return Counter(e.labels[t] for e in examples)

        count, train_n, val_n, test_n, balanced_n = (
            per_class(x) for x in (unique, splits["train"], splits["val"], splits["test"], plan.train))
        size = Counter()
        for example in unique:
            size[example.labels[t]] += sizes[example.path]["bytes"]
        for class_id, label in enumerate(task["classes"]):
            previous = old.get((task["name"], label), {})
            rows.append({"task": task["name"], "class_id": class_id, "label": label, "path": previous.get("path", ""),
                         "count": count[class_id], "train_count": train_n[class_id],
                         "balanced_train_count": balanced_n[class_id], "val_count": val_n[class_id],
                         "test_count": test_n[class_id], "bytes": size[class_id],
                         "rejected": previous.get("rejected", 0) + dropped_per_label[(task["name"], label)]})
    names = tasks[0]["classes"]
    rejected = parent_report["rejected"] + [
        {"path": f"images/{c.image_id[:2]}/{c.image_id}", "reason": f"{DROPPED_REASON}: line {c.line} of the "
                                                                    f"corrections dropped it (was {c.old_label!r})"}
        for c in dropped.values()]
    rejected.sort(key=lambda r: (r["path"], r["reason"]))
    values = list(sizes.values())
    return {
        **parent_report,
        "dataset_id": new_id,
        "source": source_doc,
        "options": plan.options.as_dict(),
        "counts": counts,
        "labels": rows,
        "balance": balance_section(tasks[0]["name"], names, plan.balanced),
        "images": {
            "count": len(values),
            "bytes": sum(v["bytes"] for v in values),
            "width": _stats([v["width"] for v in values]),
            "height": _stats([v["height"] for v in values]),
            "formats": dict(Counter(v["format"] for v in values).most_common()),
            "modes": dict(Counter(v["mode"] for v in values).most_common()),
        },
        "rejected": rejected,
        "rejected_by_reason": dict(Counter(reason_code(r["reason"]) for r in rejected).most_common()),
        "corrections": corrections_doc,
        "label_counts_diff": diff,
    }


def _stats(values: list[int]) -> dict:
    return {"min": min(values), "max": max(values), "mean": round(sum(values) / len(values), 2)} if values else {}


def _corrections_markdown(corrections: dict, diff: dict) -> str:
    lines = ["## Corrections from review", "",
             f"- relabeled {corrections['relabeled']}, dropped {corrections['dropped']}, kept {corrections['kept']}",
             "", "| task | label | before | after | change |", "|---|---|---:|---:|---:|"]
    for task, labels in diff.items():
        lines += [f"| {task} | {label} | {d['before']} | {d['after']} | {d['change']:+d} |"
                  for label, d in labels.items() if d["change"]]
    return "\n".join(lines) + "\n"
