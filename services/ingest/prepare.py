"""The ingest pipeline on a local directory: collect -> validate -> de-duplicate -> split -> balance ->
write the dataset layout (docs/architecture.md, "Artefact layout") under a prefix of an object store.

Used by the service (prefix `datasets/<id>/` in MinIO) and by `classforge dataset prepare --out DIR`
(prefix "" in a LocalObjectStore over DIR). No gRPC and no Kafka here.

Duplicates and conflicts, by content hash (sha256 of the file's bytes):
- identical files with the same labels are one image: the copy whose path sorts first is kept, the
  others are listed as `duplicate` rejects; a task's label unknown ('-') in one copy and known in
  another takes the known one;
- identical files with *different* known labels for some task are a label conflict: no label can be
  trusted, so every copy is left out of every split (rejects `label-conflict`) and the image is
  listed under `conflicts` in the report as a suspected mislabel for a person to settle.

Preconditions (FailedPrecondition, with counts of reject reasons): the source holds at least one
usable image; every label the source names (a folder, a value in the list file) keeps at least one
valid image; the first task has at least two labels.
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from services.common import image_hash
from services.common.dataset_options import IngestOptions
from services.common.errors import ClassforgeError, FailedPrecondition
from services.common.storage import ObjectStore
from services.ingest import metrics
from services.ingest.balance import Example, balance, class_counts, stratified_split
from services.ingest.names import printable
from services.ingest.options import DEFAULT_LIMITS
from services.ingest.report import balance_section, render_markdown
from services.ingest.sources import Candidate, collect
from services.ingest.validation import CONTENT_TYPES, ImageCheck, Reject, ValidationPool, reason_code

log = logging.getLogger("classforge.ingest")

MANIFEST_FORMAT = "classforge.dataset/1"
DUPLICATE = "duplicate"
LABEL_CONFLICT = "label-conflict"
LIST_FILES = ("train.list", "val.list", "test.list")


@dataclass(frozen=True)
class Prepared:
    dataset_id: str
    prefix: str
    manifest: dict
    report: dict

    @property
    def tasks(self) -> list[str]:
        return [t["name"] for t in self.manifest["tasks"]]

    @property
    def counts(self) -> dict:
        return self.manifest["counts"]


@dataclass(frozen=True)
class _Unique:
    sha256: str
    check: ImageCheck
    labels: tuple[str | None, ...]
    path: str  # local file of the kept copy
    name: str  # its name in the source

    @property
    def key(self) -> str:
        return f"images/{self.sha256[:2]}/{self.sha256}.{self.check.ext}"


def _reasons_summary(rejects: list[Reject], limit: int = 6) -> str:
    counts = Counter(r.code for r in rejects)
    text = ", ".join(f"{code} {n}" for code, n in counts.most_common(limit))
    return text or "no files"


# progress(activity, done=0, total=0, unit=""): StageWork.progress in a job.
Progress = Callable[..., None]


def _unheard(activity: str, done: int = 0, total: int = 0, unit: str = "") -> None:
    pass


def prepare_dataset(root: Path, store: ObjectStore, prefix: str, options: IngestOptions, *, dataset_id: str,
                    source: dict, list_file: str = "", list_file_field: str = "source.list_file",
                    extra_rejects: list[Reject] | tuple[Reject, ...] = (), workers: int | None = None,
                    write_threads: int = 0, max_file_bytes: int = DEFAULT_LIMITS.max_file_bytes,
                    stop_check: Callable[[], None] = lambda: None, progress: Progress | None = None) -> Prepared:
    """Prepares the dataset found in `root` and writes it under `prefix` ("" or ending in '/'),
    manifest.json last. Raises FailedPrecondition when the data allows no dataset. `stop_check` is called
    between batches of files and before every image upload; whatever it raises (a cancel) stops the work.
    `progress(activity, done, total, unit)` hears what is being done, and how far the counted parts are."""
    started = time.perf_counter()
    try:
        prepared = _prepare(root, store, prefix, options, dataset_id, source, list_file, list_file_field,
                            list(extra_rejects), workers, write_threads, max_file_bytes, started, stop_check,
                            progress or _unheard)
    except ClassforgeError:
        metrics.DATASETS.labels("failed").inc()
        raise
    metrics.DATASETS.labels("prepared").inc()
    metrics.PREPARE_SECONDS.observe(time.perf_counter() - started)
    return prepared


def _prepare(root: Path, store: ObjectStore, prefix: str, options: IngestOptions, dataset_id: str, source: dict,
             list_file: str, list_file_field: str, rejected: list[Reject], workers: int | None,
             write_threads: int, max_file_bytes: int, started: float, stop_check: Callable[[], None],
             progress: Progress) -> Prepared:
    if prefix and not prefix.endswith("/"):
        raise ValueError(f"prefix must be empty or end with '/', got {prefix!r}")
    # Names from outside (rejects of an extraction or a download, a local path) as text: a name that is
    # not valid UTF-8 must not reach report.md or a protobuf field (names.py). The collection's own
    # names are text already.
    rejected = [Reject(printable(r.path), printable(r.reason)) for r in rejected]
    source = {k: printable(v) if isinstance(v, str) else v for k, v in source.items()}
    dataset_id = printable(dataset_id)  # checked by the service; the CLI takes any --dataset-id
    with ValidationPool(min_side=options.min_side, max_pixels=options.max_pixels, max_bytes=max_file_bytes,
                        workers=workers) as pool:  # 1. validate every candidate, while the walk goes on
        found = 0

        def add(batch) -> None:
            nonlocal found
            stop_check()
            found += len(batch)
            progress(f"validating images ({found} found so far)")
            pool.add(batch)

        collection = collect(root, list_file, list_file_field, on_batch=add)
        checks = pool.results()
    tasks = collection.tasks
    rejected.extend(collection.rejected)
    rejected_labels: dict[str, tuple[str | None, ...]] = dict(collection.rejected_labels)
    candidates = collection.candidates
    files_seen = len(candidates) + len(rejected)

    valid: list[tuple[Candidate, ImageCheck]] = []
    for candidate, check in zip(candidates, checks, strict=True):
        metrics.IMAGES.labels(reason_code(check.reason) if check.reason else "valid").inc()
        if check.ok:
            valid.append((candidate, check))
        else:
            rejected.append(Reject(candidate.name, check.reason))
            rejected_labels[candidate.name] = candidate.labels
    if not valid:
        if not files_seen:
            raise FailedPrecondition("the source holds no files: expected one folder per label with images in "
                                     "it, or a list file")
        raise FailedPrecondition(f"the dataset would be empty: none of the {files_seen} files is a valid image "
                                 f"({_reasons_summary(rejected)})")

    # 2. duplicates and label conflicts, by content
    groups: dict[str, list[tuple[Candidate, ImageCheck]]] = defaultdict(list)
    for candidate, check in sorted(valid, key=lambda pair: pair[0].name):
        groups[check.sha256].append((candidate, check))
    uniques: list[_Unique] = []
    duplicates: list[dict] = []
    conflicts: list[dict] = []
    for sha, members in sorted(groups.items()):
        merged: list[str | None] = []
        disagreeing: dict[str, list[str]] = {}
        for t, task in enumerate(tasks):
            known = sorted({c.labels[t] for c, _ in members if c.labels[t] is not None})
            merged.append(known[0] if known else None)
            if len(known) > 1:
                disagreeing[task] = known
        names = [c.name for c, _ in members]
        if disagreeing:
            conflicts.append({"sha256": sha, "paths": names, "labels": disagreeing})
            detail = "; ".join(
                (f"task {task!r}: " if len(tasks) > 1 else "")
                + ", ".join(f"{c.labels[tasks.index(task)]!r} ({c.name})" for c, _ in members
                            if c.labels[tasks.index(task)] is not None)
                for task in disagreeing)
            for candidate, _ in members:
                rejected.append(Reject(candidate.name, f"{LABEL_CONFLICT}: the same image is labelled {detail}; "
                                                       f"every copy is left out as a suspected mislabel"))
                rejected_labels[candidate.name] = candidate.labels
            continue
        kept, check = members[0]
        if len(members) > 1:
            duplicates.append({"sha256": sha, "kept": kept.name, "dropped": names[1:]})
            for candidate, _ in members[1:]:
                rejected.append(Reject(candidate.name, f"{DUPLICATE}: same content as {kept.name}, which is kept"))
                rejected_labels[candidate.name] = candidate.labels
        uniques.append(_Unique(sha, check, tuple(merged), kept.path, kept.name))

    # 3. label maps and preconditions
    classes = [sorted({u.labels[t] for u in uniques if u.labels[t] is not None}) for t in range(len(tasks))]
    present = [set(c) for c in classes]
    lost = [(t, label) for (t, label) in sorted(collection.declared) if label not in present[t]]
    if lost:
        described = []
        for t, label in lost[:5]:
            mine = [r for r in rejected if (rejected_labels.get(r.path) or (None,) * len(tasks))[t] == label]
            task_text = f" of task {tasks[t]!r}" if len(tasks) > 1 else ""
            described.append(f"{label!r}{task_text} ({len(mine)} files rejected: {_reasons_summary(mine)})")
        more = f" and {len(lost) - 5} more" if len(lost) > 5 else ""
        raise FailedPrecondition(f"{len(lost)} label(s) have no valid image left: {'; '.join(described)}{more}. "
                                 f"Fix or remove those files, or remove the label")
    if len(classes[0]) < 2:
        raise FailedPrecondition(f"a classifier needs at least two labels, but task {tasks[0]!r} has "
                                 f"{len(classes[0])}: {classes[0]}")
    index = [{label: i for i, label in enumerate(c)} for c in classes]
    examples = [Example(u.key, tuple(index[t][label] if label is not None else -1 for t, label in enumerate(u.labels)))
                for u in uniques]

    # 4. split on unique images, balance the training split only
    splits = stratified_split(examples, options.val_fraction, options.test_fraction, options.seed)
    train, balanced = balance(splits.train, options.max_class_ratio, options.seed, options.max_per_class)

    # 5. write: images, label map, lists, report, manifest last
    written, written_lock = 0, threading.Lock()

    def put_image(unique: _Unique) -> None:
        nonlocal written
        stop_check()
        store.put_file(prefix + unique.key, unique.path, CONTENT_TYPES[unique.check.ext])
        with written_lock:
            written += 1
            progress("writing images", written, len(uniques), "images")

    # Remote stores answer each upload after a round trip, so several go at once; a local directory is
    # bound by the kernel's own work per file, where more threads than cores only add contention.
    threads = write_threads or store.useful_write_threads
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ingest-write") as pool:
        list(pool.map(put_image, uniques))
    labels_doc = {"tasks": [{"name": task, "classes": classes[t]} for t, task in enumerate(tasks)]}
    files: dict[str, dict] = {}

    def put_text(name: str, text: str, content_type: str) -> None:
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:  # a name that is not text got this far: shown escaped, not a failed stage
            log.error("text that is not valid UTF-8 in a dataset file; written with escapes",
                      extra={"dataset_id": dataset_id, "file": name})
            data = text.encode("utf-8", "backslashreplace")
        info = store.put_bytes(prefix + name, data, content_type)
        files[name] = {"sha256": info.sha256, "bytes": info.size}

    put_text("labels.json", json.dumps(labels_doc, indent=2) + "\n", "application/json")
    for name, rows in zip(LIST_FILES, (train, splits.val, splits.test), strict=True):
        put_text(name, "".join(example.line() + "\n" for example in rows), "text/plain; charset=utf-8")
        files[name]["lines"] = len(rows)
    put_text(image_hash.HASHES_FILE, image_hash.format_hashes((u.sha256, u.check.dhash) for u in uniques),
             image_hash.HASHES_CONTENT_TYPE)

    counts = {"files_seen": files_seen, "images": len(uniques), "train": len(train), "train_unique": len(splits.train),
              "val": len(splits.val), "test": len(splits.test), "rejected": len(rejected),
              "duplicates": sum(len(d["dropped"]) for d in duplicates), "label_conflicts": len(conflicts),
              "ignored": collection.ignored}
    report = _report(dataset_id, source, options, tasks, classes, collection.declared, uniques, examples, splits,
                     train, balanced, rejected, rejected_labels, duplicates, conflicts, counts)
    put_text("report.json", json.dumps(report, indent=2) + "\n", "application/json")
    put_text("report.md", render_markdown(report), "text/markdown; charset=utf-8")
    manifest = {
        "format": MANIFEST_FORMAT,
        "dataset_id": dataset_id,
        "created_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "source": source,
        "options": options.as_dict(),
        "tasks": labels_doc["tasks"],
        "counts": counts,
        "images": {"count": len(uniques), "bytes": sum(u.check.size for u in uniques), "prefix": "images/"},
        "files": files,
        "duration_seconds": round(time.perf_counter() - started, 3),
    }
    store.put_bytes(prefix + "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode(), "application/json")
    return Prepared(dataset_id, prefix, manifest, report)


def _stats(values: list[int]) -> dict:
    """min, max, mean and median: the trainer's automatic recipe sizes its input from the median, which a
    few huge images do not move."""
    if not values:
        return {}
    return {"min": min(values), "max": max(values), "mean": round(sum(values) / len(values), 2),
            "median": statistics.median(values)}


def _report(dataset_id, source, options, tasks, classes, declared, uniques, examples, splits, train, balanced,
            rejected, rejected_labels, duplicates, conflicts, counts) -> dict:
    by_key = {u.key: u for u in uniques}
    rows = []
    for t, task in enumerate(tasks):
        count, train_n, val_n, test_n, balanced_n = (class_counts(x, t) for x in
                                                     (examples, splits.train, splits.val, splits.test, train))
        size = Counter()
        for example in examples:
            size[example.labels[t]] += by_key[example.path].check.size
        lost = Counter(labels[t] for labels in rejected_labels.values() if labels[t] is not None)
        for class_id, label in enumerate(classes[t]):
            rows.append({"task": task, "class_id": class_id, "label": label, "path": declared.get((t, label), ""),
                         "count": count[class_id], "train_count": train_n[class_id],
                         "balanced_train_count": balanced_n[class_id], "val_count": val_n[class_id],
                         "test_count": test_n[class_id], "bytes": size[class_id], "rejected": lost[label]})
    names = classes[0]
    checks = [u.check for u in uniques]
    rejected_sorted = sorted(rejected, key=lambda r: (r.path, r.reason))
    return {
        "dataset_id": dataset_id,
        "source": source,
        "options": options.as_dict(),
        "tasks": [{"name": task, "classes": classes[t]} for t, task in enumerate(tasks)],
        "counts": counts,
        "labels": rows,
        "balance": balance_section(tasks[0], names, balanced),
        "images": {
            "count": len(checks),
            "bytes": sum(c.size for c in checks),
            "width": _stats([c.width for c in checks]),
            "height": _stats([c.height for c in checks]),
            "formats": dict(Counter(c.format for c in checks).most_common()),
            "modes": dict(Counter(c.mode for c in checks).most_common()),
        },
        "rejected": [{"path": r.path, "reason": r.reason} for r in rejected_sorted],
        "rejected_by_reason": dict(Counter(r.code for r in rejected_sorted).most_common()),
        "duplicates": duplicates,
        "duplicate_count": counts["duplicates"],
        "conflicts": conflicts,
        "label_conflict_count": len(conflicts),
    }


def read_json(store: ObjectStore, key: str) -> dict:
    return json.loads(store.get_bytes(key))


def local_source(root: Path, list_file: str = "") -> dict:
    return {"kind": "local_path", "path": str(root)} | ({"list_file": list_file} if list_file else {})
