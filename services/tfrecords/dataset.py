"""Reading a prepared dataset (`datasets/<id>/`, written by ingest) as the records builder needs it.

Layout (docs/architecture.md, "Artefact layout"): `labels.json` (`{"tasks": [{"name", "classes"}]}`),
`train.list`, `val.list`, `test.list` (lines `images/ab/<sha256>.<ext> <id task 1> [<id task 2> …]`,
-1 = unknown) and `manifest.json`, written last: a dataset without it is incomplete and is not read.
Optional: `hashes.tsv` (sha256 -> difference hash, services.common.image_hash), absent in datasets made
before ingest wrote it.

Problems with the dataset's content raise `DatasetError` (FAILED_PRECONDITION) naming the file and line:
they are the user's data, not a fault to retry.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import NamedTuple

from services.common import artefacts, image_hash
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.records import SPLITS
from services.common.storage import ObjectNotFound, ObjectStore, check_key

DATASETS_PREFIX = artefacts.DATASETS_PREFIX
_DATASET_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Images are stored once, named by content: images/<sha256[:2]>/<sha256>.<ext>
CONTENT_KEY = re.compile(r"images/([0-9a-f]{2})/(\1[0-9a-f]{62})\.[a-z0-9]{1,5}")


class DatasetError(FailedPrecondition):
    """The dataset's content cannot be turned into records (a bad list line, a missing image …)."""


class Entry(NamedTuple):
    """One list line: the image's key relative to the dataset and a class id per task."""

    key: str
    labels: tuple[int, ...]


@dataclass(frozen=True)
class Dataset:
    dataset_id: str
    prefix: str  # "datasets/<id>" (no trailing '/')
    labels: dict  # labels.json as stored
    manifest: dict
    manifest_sha256: str
    splits: dict[str, list[Entry]]
    hashes: dict[str, int] = field(default_factory=dict)  # hashes.tsv: sha256 -> dhash; {} when absent

    @property
    def class_names(self) -> list[list[str]]:
        return [list(task["classes"]) for task in self.labels["tasks"]]

    @property
    def task_names(self) -> list[str]:
        return [task["name"] for task in self.labels["tasks"]]

    def image_key(self, entry: Entry) -> str:
        return f"{self.prefix}/{entry.key}"

    def dhash(self, key: str) -> int | None:
        """The difference hash of the image at `key` (relative to the dataset), None when not known."""
        match = CONTENT_KEY.fullmatch(key) if self.hashes else None
        return self.hashes.get(match.group(2)) if match else None


def check_dataset_id(dataset_id: str, field: str = "dataset_id") -> str:
    if not dataset_id:
        raise InvalidArgument(field, "is required")
    if not _DATASET_ID.fullmatch(dataset_id):
        raise InvalidArgument(field, f"{dataset_id!r} is not a dataset id (letters, digits, '.', '_', '-'; "
                                     f"at most 128 characters, not starting with '.', '_' or '-')")
    return dataset_id


def dataset_prefix(dataset_id: str) -> str:
    return DATASETS_PREFIX + check_dataset_id(dataset_id)


def check_complete(store: ObjectStore, dataset_id: str) -> None:
    """NotFound when nothing is stored for the dataset, FailedPrecondition when it has no manifest yet."""
    prefix = dataset_prefix(dataset_id)
    if not store.exists(f"{prefix}/manifest.json"):
        _missing_manifest(store, dataset_id, prefix)


def _missing_manifest(store: ObjectStore, dataset_id: str, prefix: str):
    if next(iter(store.list(prefix + "/")), None) is None:
        raise NotFound("dataset", dataset_id)
    raise FailedPrecondition(
        f"dataset {dataset_id!r} is incomplete: {prefix}/manifest.json is missing (ingest has not finished "
        f"or crashed); prepare the dataset again, then build its records")


def load_dataset(store: ObjectStore, dataset_id: str, prefix: str | None = None) -> Dataset:
    """Reads and checks labels.json and the three lists of a complete dataset.

    NotFound when nothing is stored under the dataset's prefix; FailedPrecondition when it has no
    manifest.json (ingest has not finished, or crashed); DatasetError for bad content."""
    prefix = (prefix if prefix is not None else dataset_prefix(dataset_id)).rstrip("/")
    try:
        raw_manifest = store.get_bytes(f"{prefix}/manifest.json")
    except ObjectNotFound:
        _missing_manifest(store, dataset_id, prefix)
    manifest = _json(raw_manifest, f"{prefix}/manifest.json")
    labels = _json(_get(store, f"{prefix}/labels.json", dataset_id), f"{prefix}/labels.json")
    class_names = _check_labels(labels, f"{prefix}/labels.json")
    splits = {}
    for split in SPLITS:
        key = f"{prefix}/{split}.list"
        try:
            text = store.get_bytes(key)
        except ObjectNotFound:
            if split == "train":
                raise DatasetError(f"dataset {dataset_id!r} has no train.list ({key})") from None
            text = b""
        splits[split] = parse_list(text, key, class_names)
    if not splits["train"]:
        raise DatasetError(f"dataset {dataset_id!r} has an empty training list ({prefix}/train.list)")
    hashes_key = f"{prefix}/{image_hash.HASHES_FILE}"
    try:
        hashes = image_hash.parse_hashes(store.get_bytes(hashes_key), hashes_key)
    except ObjectNotFound:  # a dataset made before ingest wrote hashes
        hashes = {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"dataset {dataset_id!r}: {exc}") from None
    return Dataset(dataset_id, prefix, labels, manifest, hashlib.sha256(raw_manifest).hexdigest(), splits, hashes)


def _get(store: ObjectStore, key: str, dataset_id: str) -> bytes:
    try:
        return store.get_bytes(key)
    except ObjectNotFound:
        raise DatasetError(f"dataset {dataset_id!r} has no {key.rsplit('/', 1)[-1]} ({key})") from None


def _json(raw: bytes, where: str) -> dict:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise DatasetError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise DatasetError(f"{where} must hold a JSON object")
    return value


def _check_labels(labels: dict, where: str) -> list[list[str]]:
    tasks = labels.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise DatasetError(f'{where}: expected {{"tasks": [{{"name": …, "classes": […]}}, …]}} with at least one task')
    names = []
    for index, task in enumerate(tasks):
        if not (isinstance(task, dict) and isinstance(task.get("name"), str)
                and isinstance(task.get("classes"), list) and task["classes"]
                and all(isinstance(c, str) for c in task["classes"])):
            raise DatasetError(f"{where}: task {index} needs a name and a non-empty list of class names")
        names.append(task["classes"])
    return names


def parse_list(text: bytes, where: str, class_names: list[list[str]]) -> list[Entry]:
    """The entries of one list file, in file order (oversampled lines stay where they are)."""
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise DatasetError(f"{where} is not UTF-8 text") from None
    tasks = len(class_names)
    entries = []
    content_key = CONTENT_KEY.fullmatch
    label_cache: dict[tuple[str, ...], tuple[int, ...]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != tasks + 1:
            raise DatasetError(f"{where} line {number}: expected an image path and {tasks} class id(s), "
                               f"got {line!r}")
        key, raw = parts[0], tuple(parts[1:])
        labels = label_cache.get(raw)
        if labels is None:
            labels = label_cache[raw] = _labels(raw, class_names, where, number)
        if not content_key(key):  # the usual content-addressed name is valid by construction
            if not key.startswith("images/"):
                raise DatasetError(f"{where} line {number}: image path {key!r} must be under images/")
            try:
                check_key(key)
            except InvalidArgument as exc:
                raise DatasetError(f"{where} line {number}: image path {exc.message.split(': ', 1)[-1]}") from None
        entries.append(Entry(key, labels))
    return entries


def _labels(raw: tuple[str, ...], class_names: list[list[str]], where: str, number: int) -> tuple[int, ...]:
    labels = []
    for task, value in enumerate(raw):
        try:
            label = int(value)
        except ValueError:
            raise DatasetError(f"{where} line {number}: class id {value!r} of task {task} is not an integer") from None
        if label != -1 and not 0 <= label < len(class_names[task]):
            raise DatasetError(f"{where} line {number}: class id {label} of task {task} is outside "
                               f"0..{len(class_names[task]) - 1} (labels.json) and is not -1 (unknown)")
        labels.append(label)
    return tuple(labels)
