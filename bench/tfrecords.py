"""Records build and read throughput on the Fashion-MNIST training images (60,000 PNGs, written as
label folders and prepared by ingest into the dataset layout).

Build: `RecordsBuilder` with 2 worker processes (the issue's target: >= 1.8x on 2 cores) against the
plain way, a single-process `tf.io.TFRecordWriter` loop over the same files producing the same
Examples (read the file, take its size with PIL, build a tf.train.Example, write it). Ours includes
everything a build does: reading the lists, planning shards, spawning the workers, checking every
image against its content hash, hashing and uploading the shards into a local object store and
writing the manifest.

Read: `RecordsReader.dataset` (parallel interleave + parallel parse/decode + batch) against a plain
sequential tf.data pipeline over the same shards (TFRecordDataset -> map(parse, decode) -> batch).

CLASSFORGE_BENCH_TFRECORDS_IMAGES=N uses the first N images (default 60000) for a quicker run.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.table import Row
from services.common.storage import LocalObjectStore
from services.demo_data import FASHION_MNIST_CLASSES, load_fashion_mnist, write_image_folders
from services.tfrecords.builder import BuildOptions, RecordsBuilder
from tests.support import sample_dataset

WORKERS = 2
ROUNDS = 3
BATCH = 256
DATASET_ID = "fmnist-bench"


def _images() -> int:
    return int(os.environ.get("CLASSFORGE_BENCH_TFRECORDS_IMAGES", "60000"))


def _say(message: str) -> None:
    print(f"  tfrecords: {message}", file=sys.stderr, flush=True)


def make_dataset(store: LocalObjectStore, count: int, scratch: Path) -> tuple[list[str], str]:
    """The images as label folders, prepared by ingest into datasets/<id>/ (no validation split: every
    image in train.list). Returns the list lines and what made the dataset."""
    images, labels = load_fashion_mnist("train")
    count = min(count, len(images))
    try:
        from services.common.dataset_options import IngestOptions
        from services.ingest.prepare import local_source, prepare_dataset
    except ImportError:  # ingest not there: the layout written directly
        items = [(sample_dataset.encode_image(images[i]), (int(labels[i]),)) for i in range(count)]
        lines = sample_dataset.write_dataset(store, DATASET_ID, {"train": items}, [("label", FASHION_MNIST_CLASSES)])
        return lines["train"], "tests.support.sample_dataset (services.ingest not importable)"
    folders = scratch / "folders"
    write_image_folders(images[:count], labels[:count], FASHION_MNIST_CLASSES, folders)
    prepare_dataset(folders, store, f"datasets/{DATASET_ID}/", IngestOptions(val_fraction=0.0), dataset_id=DATASET_ID,
                    source=local_source(folders))
    shutil.rmtree(folders)
    return store.get_bytes(f"datasets/{DATASET_ID}/train.list").decode().splitlines(), "services.ingest"


def baseline_build(root: Path, lines: list[str], out: Path) -> None:
    """The single-process loop the issue compares against."""
    import io

    import tensorflow as tf
    from PIL import Image

    names = [c.encode() for c in FASHION_MNIST_CLASSES]
    base = root / "datasets" / DATASET_ID
    with tf.io.TFRecordWriter(str(out)) as writer:
        for line in lines:
            key, label = line.split()
            data = (base / key).read_bytes()
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                fmt = image.format.lower().encode()
            sha = key.rsplit("/", 1)[1].split(".")[0].encode()
            feature = {
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
                "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[fmt])),
                "image/height": tf.train.Feature(int64_list=tf.train.Int64List(value=[height])),
                "image/width": tf.train.Feature(int64_list=tf.train.Int64List(value=[width])),
                "image/filename": tf.train.Feature(bytes_list=tf.train.BytesList(value=[key.encode()])),
                "image/source_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[sha])),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
                "image/class/text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[names[int(label)]])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def baseline_read(files: list[str]) -> int:
    import tensorflow as tf

    from services.common.records.reader import decode_image, parse_example

    def parse(serialized):
        item = parse_example(serialized, 1)
        item["image"] = decode_image(item["encoded"])
        return item

    ds = tf.data.TFRecordDataset(files).map(parse).batch(BATCH)
    return sum(int(batch["labels"].shape[0]) for batch in ds)


def run() -> list[Row]:
    import tensorflow as tf  # imported before any timing: both sides pay it once, outside the clock

    from services.common.records.reader import RecordsReader

    count = _images()
    scratch = Path(tempfile.mkdtemp(prefix="classforge-bench-tfrecords-"))
    try:
        store = LocalObjectStore(scratch / "store")
        started = time.perf_counter()
        lines, made_by = make_dataset(store, count, scratch)
        _say(f"{len(lines)} training images as PNGs in the dataset layout, by {made_by}, "
             f"in {time.perf_counter() - started:.1f}s")
        builder = RecordsBuilder(workers=WORKERS)
        ours, plain = [], []
        for round_ in range(ROUNDS):  # interleaved, so machine noise falls on both sides alike
            out = scratch / f"baseline-{round_}.tfrecord"
            started = time.perf_counter()
            baseline_build(store.root, lines, out)
            plain.append(len(lines) / (time.perf_counter() - started))
            out.unlink()
            records = LocalObjectStore(scratch / f"out-{round_}")
            started = time.perf_counter()
            result = builder.build(store, DATASET_ID, BuildOptions(), out_store=records)
            ours.append(len(lines) / (time.perf_counter() - started))
            _say(f"round {round_ + 1}: ours {ours[-1]:,.0f} images/s, baseline {plain[-1]:,.0f} images/s")
            if round_ < ROUNDS - 1:
                shutil.rmtree(records.root)

        reader = RecordsReader(records, result.prefix)
        files = reader.local_shards("train")
        read_ours, read_plain = [], []
        for _ in range(2):
            started = time.perf_counter()
            seen = sum(int(b["labels"].shape[0]) for b in reader.dataset("train", batch_size=BATCH))
            read_ours.append(seen / (time.perf_counter() - started))
            started = time.perf_counter()
            seen_plain = baseline_read(files)
            read_plain.append(seen_plain / (time.perf_counter() - started))
        assert seen == seen_plain == len(lines), (seen, seen_plain, len(lines))
        _say(f"read: ours {max(read_ours):,.0f} images/s, plain tf.data {max(read_plain):,.0f} images/s "
             f"({len(files)} shards, tf {tf.__version__})")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return [
        Row("records", f"build images/s ({len(lines)}, {WORKERS} workers)", max(ours),
            "1-process tf.io.TFRecordWriter loop", max(plain), "/s", target=1.8),
        Row("records", f"read images/s (decode+batch {BATCH})", max(read_ours),
            "sequential TFRecordDataset.map.batch", max(read_plain), "/s"),
    ]


if __name__ == "__main__":
    from bench.table import render

    print(render(run()))
