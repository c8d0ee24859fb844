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

import collections
import json
import logging
import tempfile
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from services.common import image_hash
from services.common.dataset_options import IngestOptions
from services.common.errors import ClassforgeError, FailedPrecondition
from services.common.storage import ObjectStore
from services.ingest import metrics
from services.ingest.balance import Balance, Splits, balance, stratified_split
from services.ingest.compact import CandidateList, Interned
from services.ingest.confine import LocalRoots
from services.ingest.names import printable
from services.ingest.options import DEFAULT_LIMITS
from services.ingest.report import balance_section, render_markdown
from services.ingest.sources import Candidate, Collection, collect
from services.ingest.validation import CONTENT_TYPES, FORMATS, CheckList, Reject, ValidationPool, reason_code

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


class _Uniques:
    """The kept images, one per content, in content order (which is the order of their keys): per image
    the index of its kept copy in the walk's candidates and validation's checks, and its merged labels.
    Two ints an image: the copy's path, name, digest, size and format are read from those compact lists
    (services.ingest.compact) when needed, never held as objects per image."""

    def __init__(self, candidates: CandidateList, checks: CheckList):
        self.candidates, self.checks = candidates, checks
        self.copy = array("I")
        self.label_id = array("I")  # index in label_sets
        self.label_sets: Interned[tuple[str | None, ...]] = Interned()

    def add(self, index: int, labels: tuple[str | None, ...]) -> None:
        self.copy.append(index)
        self.label_id.append(self.label_sets.id(labels))

    def __len__(self) -> int:
        return len(self.copy)

    def sha256(self, u: int) -> str:
        return self.checks.digest(self.copy[u]).hex()

    def ext(self, u: int) -> str:
        return FORMATS[self.checks.format(self.copy[u])]

    def key(self, u: int) -> str:
        sha = self.sha256(u)
        return f"images/{sha[:2]}/{sha}.{self.ext(u)}"

    def path(self, u: int) -> str:
        return self.candidates.path(self.copy[u])

    def size(self, u: int) -> int:
        return self.checks.size(self.copy[u])


def _reasons_summary(rejects: list[Reject], limit: int = 6) -> str:
    counts = Counter(r.code for r in rejects)
    text = ", ".join(f"{code} {n}" for code, n in counts.most_common(limit))
    return text or "no files"


# progress(activity, done=0, total=0, unit=""): StageWork.progress in a job.
Progress = Callable[..., None]


def _unheard(activity: str, done: int = 0, total: int = 0, unit: str = "") -> None:
    pass


@dataclass(frozen=True)
class _Request:
    """One preparation: the source, where the dataset goes, how it is made, and how the work is run
    and watched. Names from outside are printable text already (prepare_dataset)."""

    root: Path
    list_file: str
    list_file_field: str
    store: ObjectStore
    prefix: str
    dataset_id: str
    source: dict
    options: IngestOptions
    max_file_bytes: int
    workers: int | None  # validation processes (None: the pool's default)
    write_threads: int  # concurrent uploads (0: chosen for the store)
    stop_check: Callable[[], None]
    progress: Progress
    roots: LocalRoots | None  # what the walk may read (None: `root` itself)

    def __post_init__(self):
        if self.prefix and not self.prefix.endswith("/"):
            raise ValueError(f"prefix must be empty or end with '/', got {self.prefix!r}")


class _Rejects:
    """Every file left out, with its reason, in the order found; and the labels each rejected file had,
    for the per-label reject counts and for the message when a label loses every image."""

    def __init__(self, rejects: list[Reject]):
        self.items = list(rejects)
        self.labels: dict[str, tuple[str | None, ...]] = {}

    def add(self, candidate: Candidate, reason: str) -> None:
        self.items.append(Reject(candidate.name, reason))
        self.labels[candidate.name] = candidate.labels

    def of_label(self, t: int, label: str, task_count: int) -> list[Reject]:
        return [r for r in self.items if (self.labels.get(r.path) or (None,) * task_count)[t] == label]


@dataclass(frozen=True)
class _Validated:
    collection: Collection
    checks: CheckList  # one per candidate, in the same order
    # The valid candidates' indices, in 256 buckets by their digest's first byte: 4 bytes an image, and
    # deduplication sorts one bucket at a time (a sort makes a key object per item it sorts).
    valid: list[array]
    files_seen: int  # candidates and the files rejected before validation


@dataclass(frozen=True)
class _Deduplicated:
    uniques: _Uniques
    duplicates: list[dict]  # report entries: sha256, kept, dropped
    conflicts: list[dict]  # report entries: sha256, paths, labels (task -> the disagreeing labels)


@dataclass(frozen=True)
class _Labelled:
    tasks: tuple[str, ...]
    classes: list[list[str]]  # per task, its labels sorted: a class id is an index in this list
    declared: dict[tuple[int, str], str]  # (task index, label) -> where the source names it
    # A list line's class ids (-1: unknown) per label set of _Uniques.label_sets: an image's are
    # class_ids[uniques.label_id[u]]; first_class[u] is its first task's, for splitting.
    class_ids: list[tuple[int, ...]]
    first_class: array

    def line(self, uniques: _Uniques, u: int) -> str:
        """The image's list line (balance.Example.line)."""
        return " ".join([uniques.key(u), *map(str, self.class_ids[uniques.label_id[u]])])

    def class_counts(self, uniques: _Uniques, images: Iterable[int], task: int) -> Counter:
        return Counter(self.class_ids[uniques.label_id[u]][task] for u in images)


@dataclass(frozen=True)
class _Split:
    # The images (indices in _Uniques) of each split, and the balanced, shuffled training stream.
    splits: Splits  # on unique images
    train: list[int]
    balance: Balance  # what balancing did to it


def prepare_dataset(root: Path, store: ObjectStore, prefix: str, options: IngestOptions, *, dataset_id: str,
                    source: dict, list_file: str = "", list_file_field: str = "source.list_file",
                    extra_rejects: list[Reject] | tuple[Reject, ...] = (), workers: int | None = None,
                    write_threads: int = 0, max_file_bytes: int = DEFAULT_LIMITS.max_file_bytes,
                    stop_check: Callable[[], None] = lambda: None, progress: Progress | None = None,
                    roots: LocalRoots | None = None) -> Prepared:
    """Prepares the dataset found in `root` and writes it under `prefix` ("" or ending in '/'),
    manifest.json last. Raises FailedPrecondition when the data allows no dataset. `stop_check` is called
    between batches of files and before every image upload; whatever it raises (a cancel) stops the work.
    `progress(activity, done, total, unit)` hears what is being done, and how far the counted parts are.
    Nothing outside `roots` (default: `root` itself) is read; symbolic links leading out are rejected."""
    started = time.perf_counter()
    # Names from outside (rejects of an extraction or a download, a local path) as text: a name that is
    # not valid UTF-8 must not reach report.md or a protobuf field (names.py). The collection's own
    # names are text already.
    request = _Request(
        root=root, list_file=list_file, list_file_field=list_file_field, store=store, prefix=prefix,
        dataset_id=printable(dataset_id),  # checked by the service; the CLI takes any --dataset-id
        source={k: printable(v) if isinstance(v, str) else v for k, v in source.items()},
        options=options, max_file_bytes=max_file_bytes, workers=workers, write_threads=write_threads,
        stop_check=stop_check, progress=progress or _unheard, roots=roots)
    rejects = _Rejects([Reject(printable(r.path), printable(r.reason)) for r in extra_rejects])
    try:
        prepared = _prepare(request, rejects, started)
    except ClassforgeError:
        metrics.DATASETS.labels("failed").inc()
        raise
    metrics.DATASETS.labels("prepared").inc()
    metrics.PREPARE_SECONDS.observe(time.perf_counter() - started)
    return prepared


def _prepare(request: _Request, rejects: _Rejects, started: float) -> Prepared:
    validated = _collect_and_validate(request, rejects)
    deduplicated = _deduplicate(validated, rejects)
    validated.valid.clear()  # every valid candidate is now a unique image or a reject
    labelled = _label(validated.collection, deduplicated.uniques, rejects)
    uniques = deduplicated.uniques
    split = _split_and_balance(labelled, len(uniques), request.options)
    files = _DatasetFiles(request.store, request.prefix, request.dataset_id)
    # Written in this order, manifest last: a dataset with a manifest is complete.
    _write_images(request, uniques)
    tasks_doc = [{"name": task, "classes": labelled.classes[t]} for t, task in enumerate(labelled.tasks)]
    files.put_text("labels.json", json.dumps({"tasks": tasks_doc}, indent=2) + "\n", "application/json")
    # The list files and hashes.tsv are written line by line into a scratch file and uploaded from
    # there: never one string (and its encoded copy) the size of the whole list.
    for name, rows in zip(LIST_FILES, (split.train, split.splits.val, split.splits.test), strict=True):
        files.put_lines(name, (labelled.line(uniques, u) + "\n" for u in rows), "text/plain; charset=utf-8")
        files.written[name]["lines"] = len(rows)
    # Each image's difference hash, computed while validating: the records carry it to the evaluator,
    # which then need not decode every image a second time (services/common/image_hash.py).
    # The images are in content order already: hashes.tsv's order, without sorting a copy of every row.
    files.put_lines(image_hash.HASHES_FILE,
                    (image_hash.hash_line(uniques.sha256(u), value) for u in range(len(uniques))
                     if (value := uniques.checks.dhash(uniques.copy[u])) is not None),
                    image_hash.HASHES_CONTENT_TYPE)
    counts = _counts(validated, deduplicated, split, rejects)
    report = _report(request, labelled, deduplicated, split, rejects, counts)
    files.put_text("report.json", json.dumps(report, indent=2) + "\n", "application/json")
    files.put_text("report.md", render_markdown(report), "text/markdown; charset=utf-8")
    manifest = {
        "format": MANIFEST_FORMAT,
        "dataset_id": request.dataset_id,
        "created_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "source": request.source,
        "options": request.options.as_dict(),
        "tasks": tasks_doc,
        "counts": counts,
        "images": {"count": len(uniques), "bytes": sum(uniques.size(u) for u in range(len(uniques))),
                   "prefix": "images/"},
        "files": files.written,
        "duration_seconds": round(time.perf_counter() - started, 3),
    }
    request.store.put_bytes(request.prefix + "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode(),
                            "application/json")
    return Prepared(request.dataset_id, request.prefix, manifest, report)


def _collect_and_validate(request: _Request, rejects: _Rejects) -> _Validated:
    """1. Validates every candidate while the walk goes on; the invalid ones join `rejects`. Raises
    FailedPrecondition when no valid image is left."""
    options = request.options
    with ValidationPool(min_side=options.min_side, max_pixels=options.max_pixels, max_bytes=request.max_file_bytes,
                        workers=request.workers) as pool:
        found = 0

        def add(batch) -> None:
            nonlocal found
            request.stop_check()
            found += len(batch)
            request.progress(f"validating images ({found} found so far)")
            pool.add(batch)

        collection = collect(request.root, request.list_file, request.list_file_field, on_batch=add,
                             roots=request.roots)
        checks = pool.results()
    rejects.items.extend(collection.rejected)
    rejects.labels.update(collection.rejected_labels)
    files_seen = len(collection.candidates) + len(rejects.items)

    if len(checks) != len(collection.candidates):  # a bug, never a data problem
        raise AssertionError(f"{len(checks)} validation outcomes for {len(collection.candidates)} files")
    valid = [array("I") for _ in range(256)]
    for index in range(len(checks)):
        if checks.ok(index):
            metrics.IMAGES.labels("valid").inc()
            valid[checks.digest(index)[0]].append(index)
        else:
            check = checks[index]
            metrics.IMAGES.labels(reason_code(check.reason)).inc()
            rejects.add(collection.candidates[index], check.reason)
    if not any(valid):
        if not files_seen:
            raise FailedPrecondition("the source holds no files: expected one folder per label with images in "
                                     "it, or a list file")
        raise FailedPrecondition(f"the dataset would be empty: none of the {files_seen} files is a valid image "
                                 f"({_reasons_summary(rejects.items)})")
    return _Validated(collection, checks, valid, files_seen)


def _deduplicate(validated: _Validated, rejects: _Rejects) -> _Deduplicated:
    """2. One image per content: copies are `duplicate` rejects, copies labelled differently are all
    `label-conflict` rejects (module docstring)."""
    tasks = validated.collection.tasks
    candidates, checks = validated.collection.candidates, validated.checks
    uniques = _Uniques(candidates, checks)
    duplicates: list[dict] = []
    conflicts: list[dict] = []
    for group in _copies(validated.valid, checks, candidates):
        digest = checks.digest(group[0])
        members = [candidates[i] for i in group]
        sha = digest.hex()
        merged: list[str | None] = []
        disagreeing: dict[str, list[str]] = {}
        for t, task in enumerate(tasks):
            known = sorted({c.labels[t] for c in members if c.labels[t] is not None})
            merged.append(known[0] if known else None)
            if len(known) > 1:
                disagreeing[task] = known
        names = [c.name for c in members]
        if disagreeing:
            conflicts.append({"sha256": sha, "paths": names, "labels": disagreeing})
            detail = "; ".join(
                (f"task {task!r}: " if len(tasks) > 1 else "")
                + ", ".join(f"{c.labels[tasks.index(task)]!r} ({c.name})" for c in members
                            if c.labels[tasks.index(task)] is not None)
                for task in disagreeing)
            for candidate in members:
                rejects.add(candidate, f"{LABEL_CONFLICT}: the same image is labelled {detail}; "
                                       f"every copy is left out as a suspected mislabel")
            continue
        kept = members[0]
        if len(members) > 1:
            duplicates.append({"sha256": sha, "kept": kept.name, "dropped": names[1:]})
            for candidate in members[1:]:
                rejects.add(candidate, f"{DUPLICATE}: same content as {kept.name}, which is kept")
        uniques.add(group[0], tuple(merged))
    return _Deduplicated(uniques, duplicates, conflicts)


def _copies(buckets: list[array], checks: CheckList, candidates: CandidateList) -> Iterator[list[int]]:
    """The valid candidates in groups of one content, groups in content order, each group's copies in
    name order: the order of (sha256, name), sorting one bucket (one first byte of the digest) at a time."""
    for bucket in buckets:
        ordered = sorted(bucket, key=checks.digest)
        start = 0
        while start < len(ordered):
            digest, end = checks.digest(ordered[start]), start + 1
            while end < len(ordered) and checks.digest(ordered[end]) == digest:
                end += 1
            yield sorted(ordered[start:end], key=candidates.name)
            start = end


def _label(collection: Collection, uniques: _Uniques, rejects: _Rejects) -> _Labelled:
    """3. The label maps, and the preconditions on them: every label the source names keeps an image,
    the first task has two labels at least."""
    tasks = collection.tasks
    classes = [sorted({labels[t] for labels in uniques.label_sets if labels[t] is not None})
               for t in range(len(tasks))]
    present = [set(c) for c in classes]
    lost = [(t, label) for (t, label) in sorted(collection.declared) if label not in present[t]]
    if lost:
        described = []
        for t, label in lost[:5]:
            mine = rejects.of_label(t, label, len(tasks))
            task_text = f" of task {tasks[t]!r}" if len(tasks) > 1 else ""
            described.append(f"{label!r}{task_text} ({len(mine)} files rejected: {_reasons_summary(mine)})")
        more = f" and {len(lost) - 5} more" if len(lost) > 5 else ""
        raise FailedPrecondition(f"{len(lost)} label(s) have no valid image left: {'; '.join(described)}{more}. "
                                 f"Fix or remove those files, or remove the label")
    if len(classes[0]) < 2:
        raise FailedPrecondition(f"a classifier needs at least two labels, but task {tasks[0]!r} has "
                                 f"{len(classes[0])}: {classes[0]}")
    index = [{label: i for i, label in enumerate(c)} for c in classes]
    class_ids = [tuple(index[t][label] if label is not None else -1 for t, label in enumerate(labels))
                 for labels in uniques.label_sets]
    first_class = array("i", (class_ids[label_id][0] for label_id in uniques.label_id))
    return _Labelled(tasks, classes, collection.declared, class_ids, first_class)


def _split_and_balance(labelled: _Labelled, count: int, options: IngestOptions) -> _Split:
    """4. Splits on unique images (a copy never lands in two splits), and balances the training split
    only: validation and test keep the natural distribution. The images are their indices, which sort
    as their keys do (_Uniques)."""
    first = labelled.first_class.__getitem__
    splits = stratified_split(range(count), options.val_fraction, options.test_fraction, options.seed, first)
    train, balanced = balance(splits.train, options.max_class_ratio, options.seed, options.max_per_class, first)
    return _Split(splits, train, balanced)


def _write_images(request: _Request, uniques: _Uniques) -> None:
    """5. Uploads every kept image under images/; a cancel is checked before each upload."""
    written, written_lock = 0, threading.Lock()

    def put_image(u: int) -> None:
        nonlocal written
        request.stop_check()
        request.store.put_file(request.prefix + uniques.key(u), uniques.path(u), CONTENT_TYPES[uniques.ext(u)])
        with written_lock:
            written += 1
            request.progress("writing images", written, len(uniques), "images")

    # Remote stores answer each upload after a round trip, so several go at once; a local directory is
    # bound by the kernel's own work per file, where more threads than cores only add contention.
    threads = request.write_threads or request.store.useful_write_threads
    # At most a few uploads per thread queued (pool.map would make a future for every image at once).
    window = threads * 4
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ingest-write") as pool:
        pending: collections.deque = collections.deque()
        for u in range(len(uniques)):
            if len(pending) >= window:
                pending.popleft().result()
            pending.append(pool.submit(put_image, u))
        while pending:
            pending.popleft().result()


@dataclass
class _DatasetFiles:
    """Writes the dataset's text files and keeps each one's hash and size for the manifest."""

    store: ObjectStore
    prefix: str
    dataset_id: str
    written: dict[str, dict] = field(default_factory=dict)

    def put_text(self, name: str, text: str, content_type: str) -> None:
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:  # a name that is not text got this far: shown escaped, not a failed stage
            log.error("text that is not valid UTF-8 in a dataset file; written with escapes",
                      extra={"dataset_id": self.dataset_id, "file": name})
            data = text.encode("utf-8", "backslashreplace")
        info = self.store.put_bytes(self.prefix + name, data, content_type)
        self.written[name] = {"sha256": info.sha256, "bytes": info.size}

    def put_lines(self, name: str, lines: Iterable[str], content_type: str) -> None:
        """put_text of "".join(lines), written through a scratch file: the same bytes, with memory
        for one line at a time."""
        escaped = False
        with tempfile.NamedTemporaryFile(prefix="classforge-ingest-", suffix=".txt", buffering=1 << 20) as scratch:
            out = scratch.file
            for line in lines:
                try:
                    out.write(line.encode("utf-8"))
                except UnicodeEncodeError:  # as put_text: a name that is not text is written with escapes
                    escaped = True
                    out.write(line.encode("utf-8", "backslashreplace"))
            out.flush()
            if escaped:
                log.error("text that is not valid UTF-8 in a dataset file; written with escapes",
                          extra={"dataset_id": self.dataset_id, "file": name})
            info = self.store.put_file(self.prefix + name, scratch.name, content_type)
        self.written[name] = {"sha256": info.sha256, "bytes": info.size}


def _counts(validated: _Validated, deduplicated: _Deduplicated, split: _Split, rejects: _Rejects) -> dict:
    return {"files_seen": validated.files_seen, "images": len(deduplicated.uniques), "train": len(split.train),
            "train_unique": len(split.splits.train), "val": len(split.splits.val), "test": len(split.splits.test),
            "rejected": len(rejects.items), "duplicates": sum(len(d["dropped"]) for d in deduplicated.duplicates),
            "label_conflicts": len(deduplicated.conflicts), "ignored": validated.collection.ignored}


def _stats(values: Counter) -> dict:
    """min, max, mean and median of the values counted (each value -> how many times), the same numbers
    statistics.median and friends give on the list of every value, without that list: the trainer's
    automatic recipe sizes its input from the median, which a few huge images do not move."""
    count = sum(values.values())
    if not count:
        return {}
    ordered = sorted(values)

    def nth(n: int) -> int:  # the n-th smallest value, from 0
        for value in ordered:
            n -= values[value]
            if n < 0:
                return value
        raise IndexError(n)

    middle = count // 2
    median = nth(middle) if count % 2 else (nth(middle - 1) + nth(middle)) / 2
    return {"min": ordered[0], "max": ordered[-1], "mean": round(sum(v * n for v, n in values.items()) / count, 2),
            "median": median}


def _report(request: _Request, labelled: _Labelled, deduplicated: _Deduplicated, split: _Split,
            rejects: _Rejects, counts: dict) -> dict:
    """6. report.json's content (report.md is rendered from it)."""
    uniques = deduplicated.uniques
    widths, heights, formats, modes, total = Counter(), Counter(), Counter(), Counter(), 0
    for u in range(len(uniques)):  # one image at a time, in content order (the order of the counts' ties)
        check = uniques.checks[uniques.copy[u]]
        widths[check.width] += 1
        heights[check.height] += 1
        formats[check.format] += 1
        modes[check.mode] += 1
        total += check.size
    rejected_sorted = sorted(rejects.items, key=lambda r: (r.path, r.reason))
    return {
        "dataset_id": request.dataset_id,
        "source": request.source,
        "options": request.options.as_dict(),
        "tasks": [{"name": task, "classes": labelled.classes[t]} for t, task in enumerate(labelled.tasks)],
        "counts": counts,
        "labels": _label_rows(labelled, uniques, split, rejects),
        "balance": balance_section(labelled.tasks[0], labelled.classes[0], split.balance),
        "images": {
            "count": len(uniques),
            "bytes": total,
            "width": _stats(widths),
            "height": _stats(heights),
            "formats": dict(formats.most_common()),
            "modes": dict(modes.most_common()),
        },
        "rejected": [{"path": r.path, "reason": r.reason} for r in rejected_sorted],
        "rejected_by_reason": dict(Counter(r.code for r in rejected_sorted).most_common()),
        "duplicates": deduplicated.duplicates,
        "duplicate_count": counts["duplicates"],
        "conflicts": deduplicated.conflicts,
        "label_conflict_count": len(deduplicated.conflicts),
    }


def _label_rows(labelled: _Labelled, uniques: _Uniques, split: _Split, rejects: _Rejects) -> list[dict]:
    """The report's "labels": per task and class, its images per split, their bytes and its rejects."""
    rows = []
    every = range(len(uniques))
    for t, task in enumerate(labelled.tasks):
        count, train_n, val_n, test_n, balanced_n = (
            labelled.class_counts(uniques, x, t) for x in (every, split.splits.train, split.splits.val,
                                                             split.splits.test, split.train))
        size = Counter()
        for u in every:
            size[labelled.class_ids[uniques.label_id[u]][t]] += uniques.size(u)
        lost = Counter(labels[t] for labels in rejects.labels.values() if labels[t] is not None)
        for class_id, label in enumerate(labelled.classes[t]):
            rows.append({"task": task, "class_id": class_id, "label": label,
                         "path": labelled.declared.get((t, label), ""), "count": count[class_id],
                         "train_count": train_n[class_id], "balanced_train_count": balanced_n[class_id],
                         "val_count": val_n[class_id], "test_count": test_n[class_id], "bytes": size[class_id],
                         "rejected": lost[label]})
    return rows


def read_json(store: ObjectStore, key: str) -> dict:
    return json.loads(store.get_bytes(key))


def local_source(root: Path, list_file: str = "") -> dict:
    return {"kind": "local_path", "path": str(root)} | ({"list_file": list_file} if list_file else {})
