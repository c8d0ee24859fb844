"""Reads a records build (`records/<build_id>/`) as a `tf.data.Dataset`: the one way the trainer and the
evaluator get their examples.

    reader = RecordsReader(store, records_uri, cache_dir="/var/cache/classforge")
    reader.labels                    # the dataset's labels.json: {"tasks": [{"name", "classes"}, …]}
    reader.num_examples("train")     # from the manifest
    ds = reader.dataset("train", batch_size=64, shuffle=True, seed=1, image_size=224)
    for batch in ds: batch["image"]  # uint8 [64, 224, 224, 3]; batch["labels"] int64 [64, tasks]

Each element is a dict: `image` (uint8 [H, W, 3], only with decode=True), `labels` (int64 [tasks], -1
where unknown), `source_id` (sha256 of the original image), `filename` (its key in the dataset) and
`encoded` (the stored image bytes, for pipelines that decode or crop themselves). With dhash=True also
`dhash` (int64, the image/dhash feature: the 64-bit difference hash as two's complement, 0 where absent)
and `has_dhash` (bool: whether the record carries one; records built from datasets without hashes.tsv
do not).

Shards of a remote store are downloaded once into `cache_dir/<build_id>/`, each checked against the
manifest's sha256; later readers (the evaluator after the trainer, a restarted trainer) reuse them
without downloading or hashing again. Shards of a local store are read in place.

Order: with `deterministic=True` the same arguments (and the same `seed` when shuffling) give the same
order on every run; with `parallel_reads=1` and no shuffling the order is exactly the list's (shards
are contiguous ranges of it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import tensorflow as tf

from services.common.artefacts import MANIFEST, RECORDS_PREFIX
from services.common.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound
from services.common.records import FORMAT, SPLITS, example
from services.common.storage import LocalObjectStore, ObjectNotFound, ObjectStore

log = logging.getLogger("classforge.tfrecords.reader")

DEFAULT_PARALLEL_READS = 8
_DOWNLOAD_THREADS = 4
_READ_BUFFER = 8 * 1024 * 1024


def feature_spec(num_tasks: int, dhash: bool = False) -> dict:
    """The tf.io parsing spec of the records' features (image/class/text is not parsed; image/dhash,
    optional, only with dhash=True)."""
    optional = {example.DHASH: tf.io.VarLenFeature(tf.int64)} if dhash else {}
    return {**optional,
        example.ENCODED: tf.io.FixedLenFeature([], tf.string),
        example.FORMAT: tf.io.FixedLenFeature([], tf.string),
        example.HEIGHT: tf.io.FixedLenFeature([], tf.int64),
        example.WIDTH: tf.io.FixedLenFeature([], tf.int64),
        example.FILENAME: tf.io.FixedLenFeature([], tf.string),
        example.SOURCE_ID: tf.io.FixedLenFeature([], tf.string),
        example.LABEL: tf.io.FixedLenFeature([num_tasks], tf.int64),
    }


def parse_example(serialized: tf.Tensor, num_tasks: int, dhash: bool = False) -> dict[str, tf.Tensor]:
    """One serialized Example -> {"encoded", "labels", "source_id", "filename"} (no decoding), plus
    "dhash" and "has_dhash" with dhash=True."""
    parsed = tf.io.parse_single_example(serialized, feature_spec(num_tasks, dhash))
    items = {"encoded": parsed[example.ENCODED], "labels": parsed[example.LABEL],
             "source_id": parsed[example.SOURCE_ID], "filename": parsed[example.FILENAME]}
    if dhash:
        values = tf.pad(parsed[example.DHASH].values, [[0, 1]])  # zero or one value
        items["dhash"], items["has_dhash"] = values[0], tf.size(values) > 1
    return items


def parse_examples(serialized: tf.Tensor, num_tasks: int, dhash: bool = False) -> dict[str, tf.Tensor]:
    """A batch of serialized Examples -> the same dict as parse_example, each value batched."""
    parsed = tf.io.parse_example(serialized, feature_spec(num_tasks, dhash))
    items = {"encoded": parsed[example.ENCODED], "labels": parsed[example.LABEL],
             "source_id": parsed[example.SOURCE_ID], "filename": parsed[example.FILENAME]}
    if dhash:
        sparse = parsed[example.DHASH]  # [batch, 0 or 1]
        rows = tf.shape(serialized, out_type=tf.int64)[:1]
        items["dhash"] = tf.scatter_nd(sparse.indices[:, :1], sparse.values, rows)
        items["has_dhash"] = tf.scatter_nd(sparse.indices[:, :1], tf.ones_like(sparse.values), rows) > 0
    return items


def decode_image(encoded: tf.Tensor, image_size: int | tuple[int, int] | None = None) -> tf.Tensor:
    """uint8 [H, W, 3] from JPEG/PNG/GIF/BMP/WebP bytes (greyscale becomes 3 channels; the first frame
    of an animation); resized to image_size (bilinear, antialiased) when given."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    if image_size is not None:
        image = tf.image.resize(image, _pair(image_size), method="bilinear", antialias=True)
        image = tf.saturate_cast(tf.round(image), tf.uint8)
    return image


class RecordsReader:
    """One build's records. `records`: "records/<build_id>", a build id alone, or the records URI of
    the records_built event (s3://bucket/records/<id>, file:///…/records/<id>). NotFound when nothing
    is stored there; FailedPrecondition when the build has no manifest (still running, or crashed)."""

    def __init__(self, store: ObjectStore, records: str, cache_dir: str | os.PathLike | None = None, *,
                 download_threads: int = _DOWNLOAD_THREADS):
        self.store = store
        self.prefix = _records_prefix(store, records)
        try:
            self.manifest: dict = json.loads(store.get_bytes(f"{self.prefix}/{MANIFEST}"))
        except ObjectNotFound:
            if next(iter(store.list(self.prefix + "/")), None) is None:
                raise NotFound("records", self.prefix) from None
            raise FailedPrecondition(f"records {self.prefix!r} have no {MANIFEST}: the build is still running or "
                                     f"crashed; build them (again) first") from None
        if self.manifest.get("format") != FORMAT:
            raise FailedPrecondition(f"records {self.prefix!r} are in format {self.manifest.get('format')!r}; this "
                                     f"reader reads {FORMAT!r}: build them again")
        default_cache = Path(tempfile.gettempdir()) / "classforge-records-cache"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache
        self.download_threads = download_threads
        self._local: dict[str, list[str]] = {}

    @classmethod
    def from_directory(cls, path: str | os.PathLike) -> RecordsReader:
        """Records in a local directory (`classforge records build … --out DIR` writes DIR/records/<id>/)."""
        path = Path(path).resolve()
        if not (path / MANIFEST).is_file():
            raise NotFound("records directory", str(path))
        return cls(LocalObjectStore(path.parent.parent), f"{path.parent.name}/{path.name}")

    # -- what the manifest says

    @property
    def build_id(self) -> str:
        return self.manifest["build_id"]

    @property
    def labels(self) -> dict:
        """The dataset's labels.json: {"tasks": [{"name": …, "classes": [...]}, …]}."""
        return self.manifest["labels"]

    @property
    def tasks(self) -> list[tuple[str, list[str]]]:
        return [(task["name"], list(task["classes"])) for task in self.labels["tasks"]]

    def num_examples(self, split: str) -> int:
        return self._split(split)["examples"]

    def class_counts(self, split: str) -> dict[str, dict[str, int]]:
        """Examples per class, by task name then class name (in class order); examples whose label is
        unknown for a task are in unknown_counts."""
        self._split(split)
        return {task: by_split[split] for task, by_split in self.manifest["class_counts"].items()}

    def unknown_counts(self, split: str) -> dict[str, int]:
        """Examples without a label (-1), by task name."""
        self._split(split)
        return {task: by_split[split] for task, by_split in self.manifest["unknown_counts"].items()}

    def _split(self, split: str) -> dict:
        if split not in SPLITS:
            raise InvalidArgument("split", f"{split!r} is not one of {', '.join(SPLITS)}")
        return self.manifest["splits"][split]

    # -- shards on local disk

    def local_shards(self, split: str) -> list[str]:
        """Paths of the split's shards on local disk, in order: in place for a local store, else in
        the cache (downloaded on first use, each verified against the manifest's sha256)."""
        if split not in self._local:
            shards = self._split(split)["shards"]
            if self.store.local_path() is not None:
                paths = [self._in_place(shard) for shard in shards]
            else:
                with ThreadPoolExecutor(max(1, self.download_threads)) as pool:
                    paths = list(pool.map(self._cached, shards))
            self._local[split] = [str(p) for p in paths]
        return self._local[split]

    def _in_place(self, shard: dict) -> Path:
        key = f"{self.prefix}/{shard['file']}"
        try:
            recorded = self.store.stat(key).sha256
        except ObjectNotFound:
            raise DataLoss(f"shard {key} listed in the manifest is missing; build the records again") from None
        path = self.store.local_path(key)
        if recorded is None:  # no sidecar (copied by hand): hash it once
            recorded = _sha256_file(path)
        if recorded != shard["sha256"]:
            raise DataLoss(f"shard {key} does not match its manifest (sha256 {recorded}, manifest "
                           f"{shard['sha256']}); build the records again")
        return path

    def _cached(self, shard: dict) -> Path:
        path = self.cache_dir / self.build_id / shard["file"]
        stamp = path.with_name(f".{path.name}.verified")
        if path.exists() and _stamp_matches(stamp, path, shard["sha256"]):
            return path
        if path.exists():  # from an interrupted run or another process: keep it if it is right
            if _sha256_file(path) == shard["sha256"]:
                _write_stamp(stamp, path, shard["sha256"])
                return path
        key = f"{self.prefix}/{shard['file']}"
        log.info("downloading shard", extra={"key": key, "bytes": shard["bytes"]})
        try:
            info = self.store.get_file(key, path)  # atomic: a partial download never has the final name
        except ObjectNotFound:
            raise DataLoss(f"shard {key} listed in the manifest is missing; build the records again") from None
        if info.sha256 != shard["sha256"]:
            path.unlink(missing_ok=True)
            raise DataLoss(f"shard {key} does not match its manifest (sha256 {info.sha256}, manifest "
                           f"{shard['sha256']}); build the records again")
        _write_stamp(stamp, path, shard["sha256"])
        return path

    # -- tf.data

    def dataset(self, split: str, *, batch_size: int | None = None, shuffle: bool = False,
                seed: int | None = None, shuffle_buffer: int = 10_000, deterministic: bool = True,
                parallel_reads: int = DEFAULT_PARALLEL_READS, decode: bool = True,
                image_size: int | tuple[int, int] | None = None, drop_remainder: bool = False,
                dhash: bool = False) -> tf.data.Dataset:
        """The split's examples. shuffle: shard order and a `shuffle_buffer` of examples, reshuffled
        every epoch (pass `seed` for the same sequence of orders on every run). parallel_reads: shards
        read at once (interleaved one example at a time). Batching images of different sizes needs
        `image_size`. dhash: add "dhash" and "has_dhash" (see the module's docstring)."""
        if batch_size is not None and batch_size < 1:
            raise InvalidArgument("batch_size", f"must be at least 1, got {batch_size}")
        if parallel_reads < 1:
            raise InvalidArgument("parallel_reads", f"must be at least 1, got {parallel_reads}")
        files = self.local_shards(split)
        num_tasks = len(self.labels["tasks"])
        autotune = tf.data.AUTOTUNE
        if not files:
            records = tf.data.Dataset.from_tensor_slices(tf.constant([], tf.string))
        else:
            paths = tf.data.Dataset.from_tensor_slices(files)
            if shuffle:
                paths = paths.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
            cycle = min(parallel_reads, len(files))
            parallel = {"num_parallel_calls": cycle, "deterministic": deterministic} if cycle > 1 else {}
            records = paths.interleave(_read_shard, cycle_length=cycle, block_length=1, **parallel)
        if shuffle:
            records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        # The functions below hold no Python control flow that depends on tensors: AutoGraph is not needed.
        if batch_size is None:
            @tf.autograph.experimental.do_not_convert
            def parse(serialized):
                item = parse_example(serialized, num_tasks, dhash)
                if decode:
                    item["image"] = decode_image(item["encoded"], image_size)
                return item

            ds = records.map(parse, num_parallel_calls=autotune, deterministic=deterministic)
        else:
            # Batch first, then parse the whole batch at once and decode its images in one function:
            # one tf.data element per batch instead of per image, several times faster for small images.
            size = (None, None) if image_size is None else _pair(image_size)

            @tf.autograph.experimental.do_not_convert
            def decode_one(encoded):
                return decode_image(encoded, image_size)

            @tf.autograph.experimental.do_not_convert
            def parse_batch(serialized):
                items = parse_examples(serialized, num_tasks, dhash)
                if decode:
                    items["image"] = tf.map_fn(decode_one, items["encoded"],
                                               fn_output_signature=tf.TensorSpec([*size, 3], tf.uint8))
                return items

            ds = records.batch(batch_size, drop_remainder=drop_remainder).map(
                parse_batch, num_parallel_calls=autotune, deterministic=deterministic)
        return ds.prefetch(autotune).with_options(pipeline_options())


def pipeline_options() -> tf.data.Options:
    """Options for every classforge input pipeline: tf.data's autotuner off. Its optimisation thread
    sleeps in doubling periods (10 ms, 20 ms, ... up to a minute) and destroying an iterator waits for
    that sleep to end, so each pipeline's end stalled its caller for up to a minute; the trainer, which
    makes a pipeline per epoch, lost 35 s of every 82 s epoch on 60k Fashion-MNIST images. Without
    the autotuner, AUTOTUNE parallelism is one call per CPU core and AUTOTUNE prefetch a small fixed
    buffer, ample for pipelines several times faster than the model they feed."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


@tf.autograph.experimental.do_not_convert
def _read_shard(path: tf.Tensor) -> tf.data.Dataset:
    return tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER)


def _pair(image_size: int | tuple[int, int]) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))


def _records_prefix(store: ObjectStore, records: str) -> str:
    if not records:
        raise InvalidArgument("records", "is required: a records URI, records/<build_id> or a build id")
    if "://" in records:
        key = store.key_from_uri(records.rstrip("/"))
    else:
        key = records.rstrip("/")
        if "/" not in key:
            key = RECORDS_PREFIX + key
    return key


def _sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1024 * 1024):
            sha.update(chunk)
    return sha.hexdigest()


def _stamp_matches(stamp: Path, path: Path, sha256: str) -> bool:
    try:
        recorded = json.loads(stamp.read_text())
        st = path.stat()
    except (OSError, ValueError):
        return False
    return recorded == {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _write_stamp(stamp: Path, path: Path, sha256: str) -> None:
    """Records that `path` was verified, with its size and mtime: a changed file no longer matches."""
    st = path.stat()
    tmp = stamp.with_name(stamp.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))
    os.replace(tmp, stamp)
