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
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, overload

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


DIGEST_BYTES = 32


class DigestTable:
    """A value per image content (sha256), for every image of a dataset: the raw 32-byte digests, sorted,
    in one bytearray, and the values in an array of 64-bit ints. ~40 bytes an image, where a dict from hex
    strings to ints takes ~200: at 350,000 images that is what keeps a build's memory flat (#19).

    Filled with `add` in any order (hashes.tsv and a store's listing come sorted, so usually no sort is
    needed), then `get` looks a digest up by binary search."""

    def __init__(self, typecode: str = "Q"):
        self._digests = bytearray()
        self._values = array(typecode)
        self._sorted = True

    def add(self, digest: bytes, value: int) -> None:
        if len(digest) != DIGEST_BYTES:
            raise ValueError(f"a sha256 digest has {DIGEST_BYTES} bytes, got {len(digest)}")
        if self._sorted and self._digests and digest <= self._digests[-DIGEST_BYTES:]:
            self._sorted = False
        self._digests += digest
        self._values.append(value)

    def _digest(self, i: int) -> bytes:
        return bytes(self._digests[i * DIGEST_BYTES:(i + 1) * DIGEST_BYTES])

    def _sort(self) -> None:
        """Sorts by digest (once, before the first look-up), keeping the last value added for a digest
        added twice, as a dict would."""
        order = sorted(range(len(self._values)), key=self._digest)
        digests, values = bytearray(), array(self._values.typecode)
        for i in order:
            digest = self._digest(i)
            if digests and digests[-DIGEST_BYTES:] == digest:
                values[-1] = self._values[i]
                continue
            digests += digest
            values.append(self._values[i])
        self._digests, self._values, self._sorted = digests, values, True

    def get(self, digest: bytes) -> int | None:
        if not self._sorted:
            self._sort()
        lo, hi = 0, len(self._values)
        view = self._digests
        while lo < hi:
            mid = (lo + hi) // 2
            found = view[mid * DIGEST_BYTES:(mid + 1) * DIGEST_BYTES]
            if found < digest:
                lo = mid + 1
            elif found > digest:
                hi = mid
            else:
                return self._values[mid]
        return None

    def __len__(self) -> int:
        return len(self._values)


class EntryList(Sequence[Entry]):
    """One split's list, compact: per line the image's raw sha256 (32 bytes), its extension and its label
    combination as small ints, ~36 bytes a line where a list of Entry tuples holding key strings takes
    ~200. Entries are made again on access (`Entry(key, labels)`), so it reads like the list it replaces.
    A key that is not named by content (`images/ab/<sha256>.<ext>`) is kept whole on the side: lists
    written by ingest have none."""

    def __init__(self, entries: Iterable[Entry] = ()):
        self._digests = bytearray()
        self._ext = array("B")  # index in _exts; _OTHER: the key is in _other
        self._combo = array("I")  # index in _combos
        self._exts: dict[str, int] = {}  # extension -> its index (insertion order: the index's name)
        self._ext_names: list[str] = []
        self._combo_ids: dict[tuple[int, ...], int] = {}
        self._combos: list[tuple[int, ...]] = []
        self._other: dict[int, str] = {}
        for entry in entries:
            self.append(*entry)

    _OTHER = 255  # not named by content (or a 256th extension): the key is in _other
    _ZERO = bytes(DIGEST_BYTES)

    def append(self, key: str, labels: tuple[int, ...]) -> None:
        match = CONTENT_KEY.fullmatch(key)
        ext = self._exts.get(key.rpartition(".")[2], self._OTHER) if match else self._OTHER
        if match and ext == self._OTHER and len(self._ext_names) < self._OTHER:
            ext = self._exts[key.rpartition(".")[2]] = len(self._ext_names)
            self._ext_names.append(key.rpartition(".")[2])
        if ext == self._OTHER:
            self._other[len(self._ext)] = key
            self._digests += self._ZERO
        else:
            self._digests += bytes.fromhex(match.group(2))
        self._ext.append(ext)
        combo = self._combo_ids.get(labels)
        if combo is None:
            combo = self._combo_ids[labels] = len(self._combos)
            self._combos.append(labels)
        self._combo.append(combo)

    def __len__(self) -> int:
        return len(self._ext)

    def digest(self, index: int) -> bytes | None:
        """The raw sha256 of the image on line `index`, None for a key not named by content."""
        if self._ext[index] == self._OTHER:
            return None
        return bytes(self._digests[index * DIGEST_BYTES:(index + 1) * DIGEST_BYTES])

    def key(self, index: int) -> str:
        ext = self._ext[index]
        if ext == self._OTHER:
            return self._other[index]
        sha = self._digests[index * DIGEST_BYTES:(index + 1) * DIGEST_BYTES].hex()
        return f"images/{sha[:2]}/{sha}.{self._ext_names[ext]}"

    def labels(self, index: int) -> tuple[int, ...]:
        return self._combos[self._combo[index]]

    @overload
    def __getitem__(self, index: int) -> Entry: ...

    @overload
    def __getitem__(self, index: slice) -> list[Entry]: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("entry index out of range")
        return Entry(self.key(index), self.labels(index))

    def __iter__(self) -> Iterator[Entry]:
        for index in range(len(self)):
            yield Entry(self.key(index), self.labels(index))

    def label_counts(self) -> dict[tuple[int, ...], int]:
        """How many lines have each label combination."""
        counts = [0] * len(self._combos)
        for combo in self._combo:
            counts[combo] += 1
        return {labels: n for labels, n in zip(self._combos, counts, strict=True) if n}


@dataclass(frozen=True)
class Dataset:
    dataset_id: str
    prefix: str  # "datasets/<id>" (no trailing '/')
    labels: dict  # labels.json as stored
    manifest: dict
    manifest_sha256: str
    splits: dict[str, EntryList]
    hashes: DigestTable = field(default_factory=DigestTable)  # hashes.tsv: sha256 -> dhash; empty when absent

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
        return self.hashes.get(bytes.fromhex(match.group(2))) if match else None

    def entry_dhash(self, entries: EntryList, index: int) -> int | None:
        """dhash() of line `index` of `entries`, from its digest (no key string made)."""
        digest = entries.digest(index) if self.hashes else None
        return self.hashes.get(digest) if digest is not None else None


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
    # The lists and hashes.tsv are read line by line (ObjectStore.iter_lines) into compact tables: never
    # a whole file's bytes, its text and a list of its lines at once (~300 bytes a line at 350,000 lines).
    for split in SPLITS:
        key = f"{prefix}/{split}.list"
        try:
            splits[split] = parse_list(store.iter_lines(key), key, class_names)
        except ObjectNotFound:
            if split == "train":
                raise DatasetError(f"dataset {dataset_id!r} has no train.list ({key})") from None
            splits[split] = EntryList()
    if not splits["train"]:
        raise DatasetError(f"dataset {dataset_id!r} has an empty training list ({prefix}/train.list)")
    hashes_key = f"{prefix}/{image_hash.HASHES_FILE}"
    hashes = DigestTable()
    try:
        for sha, value in image_hash.iter_hashes(store.iter_lines(hashes_key), hashes_key):
            hashes.add(bytes.fromhex(sha), value)
    except ObjectNotFound:  # a dataset made before ingest wrote hashes
        pass
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


def _lines(text: bytes | Iterable[bytes], where: str) -> Iterator[str]:
    """text.decode().splitlines() (text: the file's bytes, or its lines as ObjectStore.iter_lines gives
    them), one line at a time: never a list of every line. A UTF-8 character never holds the byte
    '\n', so the file is cut there and each piece decoded and split on the other line ends splitlines
    knows (an empty piece is an empty line)."""
    pieces = _pieces(text) if isinstance(text, bytes) else (line.removesuffix(b"\n") for line in text)
    for piece in pieces:
        try:
            decoded = piece.decode("utf-8")
        except UnicodeDecodeError:
            raise DatasetError(f"{where} is not UTF-8 text") from None
        if decoded:
            yield from decoded.splitlines()
        else:
            yield ""


def _pieces(text: bytes) -> Iterator[bytes]:
    """text.split(b"\n") without the empty piece after a final b"\n", one piece at a time."""
    start = 0
    while start < len(text):
        end = text.find(b"\n", start)
        end = len(text) if end < 0 else end
        yield text[start:end]
        start = end + 1


def parse_list(text: bytes | Iterable[bytes], where: str, class_names: list[list[str]]) -> EntryList:
    """The entries of one list file (its bytes, or its lines), in file order (oversampled lines stay
    where they are)."""
    lines = _lines(text, where)
    tasks = len(class_names)
    entries = EntryList()
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
        entries.append(key, labels)
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
