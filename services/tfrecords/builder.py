"""Builds sharded TFRecords from a prepared dataset: `datasets/<id>/` in, `records/<build_id>/` out.

How a build runs (`RecordsBuilder.build`):

1. If `records/<build_id>/manifest.json` exists the build is done: nothing is rebuilt.
2. The dataset's lists are read and checked, and every listed image's size is looked up (one listing
   of the store, or one stat per file on a local store), so a missing image fails the build before
   anything is written.
3. Each split's list is cut into contiguous shards by bytes: `ceil(bytes / shard_bytes)` shards, but at
   least `min_shards` (the read parallelism) and at most one per example. List order is kept: the
   oversampled, shuffled training stream of ingest comes back exactly as listed, one Example per line.
4. Shards are cut into chunks of at most ~4 MB / 1024 examples. Worker processes (services.tfrecords.
   workers; no TensorFlow: services.common.records.example frames records by hand) fetch the chunk's images,
   check each against its content hash, optionally re-encode it, and return the framed records. Builds
   of fewer than 5,000 examples (not re-encoded) encode in the build's own process instead. The parent
   writes them, in order, to a local scratch file per shard while hashing it; a finished shard is
   handed to an upload thread (streamed to the store in parts) while the next one is written. At most
   `2 × workers` chunks are in flight and at most two finished shards wait on local disk, so memory
   and disk stay bounded whatever the dataset's size.
5. Objects under the prefix that this build did not write (left by an older crashed build) are removed,
   then `manifest.json` is written LAST. A crash anywhere before leaves no manifest: nothing half-built
   is ever read, and the next build writes every shard again (same names, same bytes).

Shard sizes are planned from the original image sizes; with re-encoding the shards come out smaller.

`build_id` = `<dataset_id>-<10 hex of sha256(options, format version)>`: same dataset and options, same
id, so a repeated request finds the finished build.
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import itertools
import json
import logging
import math
import os
import queue
import tempfile
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from services.common import artefacts
from services.common.errors import DataLoss, InvalidArgument
from services.common.records import FORMAT, SPLITS, example
from services.common.storage import ObjectNotFound, ObjectStore
from services.tfrecords import metrics
from services.tfrecords.dataset import CONTENT_KEY, Dataset, DatasetError, DigestTable, Entry, EntryList, load_dataset
from services.tfrecords.workers import ChunkEncoder, EncodeJob, WorkerPool

log = logging.getLogger("classforge.tfrecords")

RECORDS_PREFIX = artefacts.RECORDS_PREFIX
MANIFEST = "manifest.json"

DEFAULT_SHARD_BYTES = 100 * 1024 * 1024
DEFAULT_MIN_SHARDS = 8
DEFAULT_JPEG_QUALITY = 90
MIN_SHARD_BYTES = 1024
MAX_SHARD_BYTES = 64 * 1024**3

_CHUNK_EXAMPLES = 1024
_CHUNK_BYTES = 4 * 1024 * 1024
_INLINE_BELOW = 5000  # builds of fewer examples (not re-encoded) run in-process: starting workers costs more


# --------------------------------------------------------------------------- options and ids


@dataclass(frozen=True)
class BuildOptions:
    """What shapes a build's output; all of it goes into the build id. 0 means the default."""

    shard_bytes: int = DEFAULT_SHARD_BYTES
    max_side: int = 0  # re-encode to JPEG with the longer side at most this; 0 keeps the original bytes
    jpeg_quality: int = 0  # quality of re-encoded JPEGs; 0 means 90 (only with max_side)
    min_shards: int = DEFAULT_MIN_SHARDS  # at least this many shards per split (the read parallelism)

    def __post_init__(self) -> None:
        def set_(name: str, value: int) -> None:
            object.__setattr__(self, name, value)

        for name in ("shard_bytes", "max_side", "jpeg_quality", "min_shards"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise InvalidArgument(f"options.{name}", f"must be an integer, got {getattr(self, name)!r}")
        set_("shard_bytes", self.shard_bytes or DEFAULT_SHARD_BYTES)
        set_("min_shards", self.min_shards or DEFAULT_MIN_SHARDS)
        if not MIN_SHARD_BYTES <= self.shard_bytes <= MAX_SHARD_BYTES:
            raise InvalidArgument("options.shard_bytes", f"must be between {MIN_SHARD_BYTES} and {MAX_SHARD_BYTES} "
                                                         f"bytes (0 means about 100 MB), got {self.shard_bytes}")
        if not 1 <= self.min_shards <= 10_000:
            raise InvalidArgument("options.min_shards", f"must be between 1 and 10000, got {self.min_shards}")
        if not 0 <= self.max_side <= 65_500:
            raise InvalidArgument("options.max_side", f"must be between 1 and 65500 pixels, or 0 to keep the "
                                                      f"original bytes; got {self.max_side}")
        if self.max_side == 0:
            if self.jpeg_quality:
                raise InvalidArgument("options.jpeg_quality", "only applies when re-encoding: set options.max_side "
                                                              "too, or leave jpeg_quality at 0")
        else:
            set_("jpeg_quality", self.jpeg_quality or DEFAULT_JPEG_QUALITY)
            if not 1 <= self.jpeg_quality <= 100:
                raise InvalidArgument("options.jpeg_quality", f"must be between 1 and 100, got {self.jpeg_quality}")

    @property
    def reencode(self) -> bool:
        return self.max_side > 0

    def as_dict(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        canonical = json.dumps({"format": FORMAT, **self.as_dict()}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def build_id_for(dataset_id: str, options: BuildOptions) -> str:
    return f"{dataset_id}-{options.digest()}"


def records_prefix(build_id: str) -> str:
    """The build's prefix, without a trailing '/': `records/<build_id>`."""
    return RECORDS_PREFIX + build_id


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def read_manifest(store: ObjectStore, prefix: str) -> dict | None:
    """The build's manifest, or None while the build is not complete."""
    try:
        return json.loads(store.get_bytes(f"{prefix}/{MANIFEST}"))
    except ObjectNotFound:
        return None


# --------------------------------------------------------------------------- planning


def plan_shards(sizes: Sequence[int], shard_bytes: int, min_shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges over examples of the given sizes: ceil(total / shard_bytes)
    shards, at least min_shards, at most one per example, balanced by bytes."""
    n = len(sizes)
    if n == 0:
        return []
    prefix = list(itertools.accumulate(sizes, initial=0))
    total = prefix[-1]
    count = min(n, max(min_shards, math.ceil(total / shard_bytes)))
    bounds = [0]
    for k in range(1, count):
        cut = bisect.bisect_left(prefix, total * k / count)
        bounds.append(min(max(cut, bounds[-1] + 1), n - (count - k)))
    bounds.append(n)
    return list(itertools.pairwise(bounds))


@dataclass(frozen=True)
class _Shard:
    split: str
    index: int
    count: int
    start: int
    end: int

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index, self.count)


# --------------------------------------------------------------------------- build side


@dataclass(frozen=True)
class BuildResult:
    build_id: str
    prefix: str  # records/<build_id>
    manifest: dict
    built: bool  # False: the manifest already existed and nothing was written


class RecordsBuilder:
    """Builds records; holds only configuration, so one builder serves concurrent builds.

    workers: encoding processes (0: one per CPU). store_factory: opens the object store in a worker
    process (needed for a remote store; a local store is read directly). Without it, builds from a
    remote store encode in-process, fetching with threads. scratch_dir: where shards are written
    before their upload (default: the system temp directory)."""

    def __init__(self, *, workers: int = 0, scratch_dir: str | os.PathLike | None = None,
                 store_factory: Callable[[], ObjectStore] | None = None,
                 inline_below: int = _INLINE_BELOW):
        self.workers = workers or os.cpu_count() or 1
        self.scratch_dir = scratch_dir
        self.store_factory = store_factory
        self.inline_below = inline_below

    def build(self, store: ObjectStore, dataset_id: str, options: BuildOptions | None = None, *,
              out_store: ObjectStore | None = None, dataset_prefix: str | None = None,
              force: bool = False) -> BuildResult:
        """Builds records/<build_id>/ in `out_store` (default: the dataset's store) unless its manifest
        exists (or force). Raises NotFound / FailedPrecondition / DatasetError for dataset problems."""
        options = options or BuildOptions()
        out = out_store or store
        build_id = build_id_for(dataset_id, options)
        prefix = records_prefix(build_id)
        if not force and (manifest := read_manifest(out, prefix)) is not None:
            return BuildResult(build_id, prefix, manifest, built=False)
        if force:  # no reader may take the old manifest for the shards being rewritten
            out.delete(f"{prefix}/{MANIFEST}")
        started = time.monotonic()
        dataset = load_dataset(store, dataset_id, dataset_prefix)
        local_root = str(root) if (root := store.local_path()) is not None else None
        job = EncodeJob(dataset.prefix, dataset.class_names, options.max_side, options.jpeg_quality, local_root,
                        self.store_factory)
        examples = sum(len(entries) for entries in dataset.splits.values())
        in_process = (self.workers <= 1 or (examples < self.inline_below and not options.reencode)
                      or (local_root is None and self.store_factory is None))
        # Started now, so that the workers boot while the images are sized and the shards planned.
        pool = None if in_process else WorkerPool(self.workers)
        try:
            # 8 bytes per line (an array, not a list of ints): memory per image stays small
            estimates = _estimates(store, dataset, _Overhead(dataset.class_names))
            shards = []
            for split in SPLITS:
                ranges = plan_shards(estimates[split], options.shard_bytes, options.min_shards)
                shards += [_Shard(split, i, len(ranges), a, b) for i, (a, b) in enumerate(ranges)]
            log.info("building records", extra={"build_id": build_id, "dataset_id": dataset_id, "examples": examples,
                                                "shards": len(shards), "workers": 0 if pool is None else self.workers,
                                                "estimated_bytes": sum(map(sum, estimates.values()))})
            # The chunks are made as the encoders take them, never all at once (_Chunks).
            chunks = _Chunks((shard, chunk) for shard in shards
                             for chunk in _chunks(dataset, estimates[shard.split], shard))
            payloads = (_encode_inline(job, store, chunks.for_encoder()) if pool is None
                        else pool.imap(job, chunks.for_encoder()))
            written = self._write_shards(out, prefix, chunks, payloads)
        except BaseException:
            if pool is not None:
                pool.close(kill=True)
            raise
        if pool is not None:
            pool.close()
        stale = [info.key for info in out.list(prefix + "/")
                 if info.key.rpartition("/")[2] not in written and info.key != f"{prefix}/{MANIFEST}"]
        for key in stale:  # left by an older build that crashed (another shard plan)
            out.delete(key)
        manifest = _manifest(build_id, dataset, options, shards, written, time.monotonic() - started)
        out.put_bytes(f"{prefix}/{MANIFEST}", json.dumps(manifest, indent=1).encode(), "application/json")
        log.info("records built", extra={"build_id": build_id, "seconds": round(time.monotonic() - started, 3)})
        return BuildResult(build_id, prefix, manifest, built=True)

    # -- the pipeline

    def _write_shards(self, out: ObjectStore, prefix: str, chunks: _Chunks,
                      payloads: Iterator[bytes]) -> dict[str, dict]:
        """Writes the encoded chunks, in order, into one scratch file per shard; uploads each finished
        shard while the next is written. Returns the uploaded shards' manifest entries by file name."""
        written: dict[str, dict] = {}
        if self.scratch_dir:  # a configured scratch folder may not exist yet (a fresh volume)
            Path(self.scratch_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="classforge-records-", dir=self.scratch_dir) as scratch, \
                _Uploader(out) as uploader:
            current: _ShardFile | None = None
            try:
                for payload in payloads:
                    shard, count = chunks.encoded()
                    if current is None or current.shard != shard:
                        if current is not None:
                            uploader.put(f"{prefix}/{current.shard.name}", current.finish(), written)
                        current = _ShardFile(shard, Path(scratch) / shard.name)
                    current.write(payload, count)
                if chunks.left():
                    raise RuntimeError(f"the encoders returned {chunks.left()} chunk(s) fewer than they took")
                if current is not None:
                    uploader.put(f"{prefix}/{current.shard.name}", current.finish(), written)
            finally:
                payloads.close()
                if current is not None:
                    current.close()
        return written


class _Overhead:
    """Bytes a framed Example adds around its image and filename, per label combination: an upper
    bound within a few bytes (ids and sizes at their longest), so planned shards do not overshoot."""

    def __init__(self, class_names: list[list[str]]):
        self._encoder = example.ExampleEncoder(class_names)
        self._cache: dict[tuple[int, ...], int] = {}

    def __call__(self, labels: tuple[int, ...]) -> int:
        size = self._cache.get(labels)
        if size is None:
            empty = self._encoder.encode(encoded=b"", image_format="jpeg", height=2**21, width=2**21, filename="",
                                         source_id="0" * 64, labels=labels, dhash=(1 << 64) - 1)
            size = self._cache[labels] = len(example.frame(empty)) + 12  # + longer length prefixes
        return size


def _chunks(dataset: Dataset, estimates: Sequence[int], shard: _Shard
            ) -> Iterator[list[tuple[str, tuple[int, ...], int | None]]]:
    """The shard's lines as chunks of (key, labels, dhash), made only as the encoders take them."""
    entries = dataset.splits[shard.split]
    chunk, size = [], 0
    for index in range(shard.start, shard.end):
        chunk.append((entries.key(index), entries.labels(index), dataset.entry_dhash(entries, index)))
        size += estimates[index]
        if len(chunk) >= _CHUNK_EXAMPLES or size >= _CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class _Chunks:
    """One lazy stream of (shard, chunk) read by two consumers in step: the encoders (who run ahead
    by the chunks in flight) and the writer (who needs each chunk's shard and length when its payload
    comes back). Only the chunks between the two are held: at most the in-flight ones."""

    def __init__(self, pairs: Iterator[tuple[_Shard, list]]):
        self._pairs = pairs
        self._pending: collections.deque = collections.deque()

    def for_encoder(self) -> Iterator[list]:
        for pair in self._pairs:
            self._pending.append((pair[0], len(pair[1])))
            yield pair[1]

    def encoded(self) -> tuple[_Shard, int]:
        """(shard, number of examples) of the oldest chunk not yet written: call it once per payload,
        after the payload came back (so the encoders have taken its chunk)."""
        return self._pending.popleft()

    def left(self) -> int:
        return len(self._pending)


def _encode_inline(job: EncodeJob, store: ObjectStore, chunks: Iterable[list]) -> Iterator[bytes]:
    encoder = ChunkEncoder(job, store)
    try:
        for chunk in chunks:
            yield encoder.encode(chunk)
    finally:
        encoder.close()


class _ShardFile:
    """One shard being written to local scratch, hashed as it goes."""

    def __init__(self, shard: _Shard, path: Path):
        self.shard, self.path = shard, path
        self._handle = open(path, "wb")  # noqa: SIM115 - closed by finish()/close()
        self._sha = hashlib.sha256()
        self.size = self.examples = 0

    def write(self, payload: bytes, examples: int) -> None:
        self._handle.write(payload)
        self._sha.update(payload)
        self.size += len(payload)
        self.examples += examples

    def finish(self) -> tuple[Path, dict]:
        self._handle.close()
        return self.path, {"file": self.shard.name, "examples": self.examples, "bytes": self.size,
                           "sha256": self._sha.hexdigest()}

    def close(self) -> None:
        self._handle.close()


class _Uploader:
    """Uploads finished shards in a background thread, one at a time, while the next is written.
    At most one more shard waits its turn, which bounds the scratch disk a build uses."""

    def __init__(self, store: ObjectStore):
        self.store = store
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._abort = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tfrecords-upload", daemon=True)

    def __enter__(self) -> _Uploader:
        self._thread.start()
        return self

    def put(self, key: str, finished: tuple[Path, dict], written: dict[str, dict]) -> None:
        self._raise()
        self._queue.put((key, *finished, written))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            key, path, info, written = item
            try:
                if not self._abort.is_set() and self._error is None:
                    stored = self.store.put_file(key, path)
                    if stored.sha256 != info["sha256"] or stored.size != info["bytes"]:
                        raise DataLoss(f"uploaded shard {key} does not match what was written "
                                       f"(sha256 {stored.sha256} vs {info['sha256']}); build again")
                    written[info["file"]] = info
                    split = info["file"].split("-", 1)[0]
                    metrics.EXAMPLES_WRITTEN.labels(split).inc(info["examples"])
                    metrics.BYTES_WRITTEN.labels(split).inc(info["bytes"])
                    metrics.SHARDS_WRITTEN.labels(split).inc()
            except BaseException as exc:  # noqa: BLE001 - handed to the building thread
                self._error = exc
            finally:
                path.unlink(missing_ok=True)

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._abort.set()
        self._queue.put(None)
        self._thread.join()
        if exc_type is None:
            self._raise()


def _estimates(store: ObjectStore, dataset: Dataset, overhead: _Overhead) -> dict[str, array]:
    """Per split and line, the bytes its record is planned at: the image's size, its key and the framing.
    Every listed image's size is looked up first, so a missing one fails the build (DatasetError) before
    anything is written. Line by line, into arrays: no per-image object is kept."""
    estimates: dict[str, array] = {}
    missing: set[str] = set()
    with _ImageSizes(store, dataset) as sizes:
        for split in SPLITS:
            entries = dataset.splits[split]
            est = estimates[split] = array("q")
            for index in range(len(entries)):
                key = entries.key(index)
                size = sizes.of(entries, index, key)
                if size is None:
                    missing.add(key)
                    size = 0
                est.append(size + len(key) + overhead(entries.labels(index)))
    if missing:
        absent = sorted(missing)
        more = f" and {len(absent) - 3} more" if len(absent) > 3 else ""
        raise DatasetError(f"dataset {dataset.dataset_id!r} lists images that are not stored: "
                           f"{', '.join(absent[:3])}{more}; prepare the dataset again")
    return estimates


class _ImageSizes:
    """The stored size of a listed image. Files in place: one stat per line (keys are checked: no '..', no
    absolute path), nothing held. A remote store: one listing of the dataset's images, kept as a
    DigestTable of size and extension packed in one int (~40 bytes an image; a store lists keys sorted,
    hence by digest, so no sort is needed), with the rare keys not named by content, or a second
    extension of one content, on the side."""

    def __init__(self, store: ObjectStore, dataset: Dataset):
        self._store, self._dataset = store, dataset
        self._base: int | None = None
        self._directory = store.local_path(dataset.prefix)
        self._by_digest = DigestTable("q")  # size << 8 | extension id
        self._exts: dict[str, int] = {}
        self._by_key: dict[str, int] = {}

    def __enter__(self) -> _ImageSizes:
        if self._directory is not None:
            try:
                self._base = os.open(self._directory, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                self._base = None
            return self
        start = len(self._dataset.prefix) + 1
        last = b""
        for info in self._store.list(f"{self._dataset.prefix}/images/"):
            key = info.key[start:]
            match = CONTENT_KEY.fullmatch(key)
            digest = bytes.fromhex(match.group(2)) if match else b""
            ext = self._ext_id(key) if match else None
            if match and digest != last and ext is not None:
                self._by_digest.add(digest, info.size << 8 | ext)
                last = digest
            else:
                self._by_key[key] = info.size
        return self

    def _ext_id(self, key: str) -> int | None:
        """A small id for the key's extension (None past 256 of them: such keys go on the side)."""
        ext = key.rpartition(".")[2]
        found = self._exts.get(ext)
        if found is None and len(self._exts) < 256:
            found = self._exts[ext] = len(self._exts)
        return found

    def of(self, entries: EntryList, index: int, key: str) -> int | None:
        if self._directory is not None:
            if self._base is None:
                return None
            try:
                return os.stat(key, dir_fd=self._base).st_size
            except (FileNotFoundError, NotADirectoryError):
                return None
        digest = entries.digest(index)
        packed = self._by_digest.get(digest) if digest is not None else None
        if packed is not None and packed & 0xFF == self._exts.get(key.rpartition(".")[2]):
            return packed >> 8
        return self._by_key.get(key)

    def __exit__(self, *exc) -> None:
        if self._base is not None:
            os.close(self._base)
            self._base = None


def class_counts(entries: Iterable[Entry], class_names: list[list[str]]) -> tuple[list[dict], list[int]]:
    """Per task: examples per class name (in class order), and how many have no label for the task."""
    combos = entries.label_counts() if isinstance(entries, EntryList) else Counter(e.labels for e in entries)
    counts, unknown = [], []
    for task, classes in enumerate(class_names):
        per_class = [0] * len(classes)
        missing = 0
        for labels, n in combos.items():
            if labels[task] == example.UNKNOWN:
                missing += n
            else:
                per_class[labels[task]] += n
        counts.append(dict(zip(classes, per_class, strict=True)))
        unknown.append(missing)
    return counts, unknown


def _manifest(build_id: str, dataset: Dataset, options: BuildOptions, shards: list[_Shard],
              written: dict[str, dict], seconds: float) -> dict:
    """counts: examples per split; class_counts: task -> split -> class name -> examples; unknown_counts:
    task -> split -> examples without a label for the task; splits: split -> examples, bytes and the
    shards in order (file, examples, bytes, sha256)."""
    tasks = dataset.task_names
    splits: dict[str, dict] = {}
    per_class: dict[str, dict] = {task: {} for task in tasks}
    unknown: dict[str, dict] = {task: {} for task in tasks}
    for split in SPLITS:
        infos = [written[s.name] for s in shards if s.split == split]
        entries = dataset.splits[split]
        if sum(i["examples"] for i in infos) != len(entries):  # a bug, never a data problem
            raise AssertionError(f"{split}: wrote {sum(i['examples'] for i in infos)} of {len(entries)} examples")
        splits[split] = {"examples": len(entries), "bytes": sum(i["bytes"] for i in infos), "shards": infos}
        counts, missing = class_counts(entries, dataset.class_names)
        for task, task_counts, task_missing in zip(tasks, counts, missing, strict=True):
            per_class[task][split] = task_counts
            unknown[task][split] = task_missing
    return {"format": FORMAT, "build_id": build_id, "dataset_id": dataset.dataset_id,
            "dataset_manifest_sha256": dataset.manifest_sha256, "options": options.as_dict(),
            "labels": dataset.labels,
            "features": list(example.FEATURE_KEYS) + ([example.DHASH] if dataset.hashes or options.reencode else []),
            "counts": {split: info["examples"] for split, info in splits.items()},
            "class_counts": per_class, "unknown_counts": unknown, "splits": splits,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "build_seconds": round(seconds, 3)}
