"""Writes small prepared datasets in ingest's layout (`datasets/<id>/`), for the records tests and
the benchmark: a stand-in for ingest, so the builder is tested against exactly the layout documented
in docs/architecture.md without depending on ingest's options (validation, balancing, splitting).

Nothing here is used by the service itself.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from services.common import image_hash
from services.common.storage import ObjectStore

Item = tuple[bytes, tuple[int, ...]]  # (image file bytes, class id per task; -1 unknown)


def encode_image(pixels: np.ndarray, fmt: str = "png", **save_args) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, {"jpg": "JPEG", "jpeg": "JPEG"}.get(fmt, fmt.upper()), **save_args)
    return out.getvalue()


def image_key(data: bytes, ext: str) -> str:
    sha = hashlib.sha256(data).hexdigest()
    return f"images/{sha[:2]}/{sha}.{ext}"


def write_dataset(store: ObjectStore, dataset_id: str, splits: dict[str, Sequence[Item]],
                  tasks: Sequence[tuple[str, Sequence[str]]], *, ext: str = "png", complete: bool = True,
                  threads: int = 8, hashes: bool = False) -> dict[str, list[str]]:
    """Stores each distinct image once under its content hash, then labels.json, the lists in the
    given order, with `hashes` hashes.tsv (as ingest writes it; without: a dataset made before), and,
    if `complete`, manifest.json last. Returns each split's list lines."""
    prefix = f"datasets/{dataset_id}"
    lines: dict[str, list[str]] = {}
    images: dict[str, bytes] = {}
    for split in ("train", "val", "test"):
        lines[split] = []
        for data, labels in splits.get(split, ()):
            key = image_key(data, ext)
            images[key] = data
            lines[split].append(" ".join([key, *map(str, labels)]))
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda item: store.put_bytes(f"{prefix}/{item[0]}", item[1]), images.items()))
    store.put_bytes(f"{prefix}/labels.json", json.dumps(
        {"tasks": [{"name": name, "classes": list(classes)} for name, classes in tasks]}).encode())
    list_sha = {}
    for split, split_lines in lines.items():
        body = "".join(line + "\n" for line in split_lines).encode()
        list_sha[f"{split}.list"] = store.put_bytes(f"{prefix}/{split}.list", body).sha256
    if hashes:
        store.put_bytes(f"{prefix}/{image_hash.HASHES_FILE}", image_hash.format_hashes(
            (hashlib.sha256(data).hexdigest(), image_hash.dhash(data)) for data in images.values()).encode())
    if complete:
        store.put_bytes(f"{prefix}/manifest.json", json.dumps({
            "id": dataset_id, "source": "tests.support.sample_dataset",
            "tasks": [name for name, _ in tasks], "counts": {s: len(v) for s, v in lines.items()},
            "lists": list_sha}).encode())
    return lines


def digits_items(count: int, *, start: int = 0, size: int = 16, tasks: int = 1, fmt: str = "png") -> list[Item]:
    """`count` of scikit-learn's digits as encoded images. With two tasks the second is parity
    ("even"/"odd"), unknown (-1) for every third image."""
    images, labels = _digits(size)
    items = []
    for i in range(start, start + count):
        digit = int(labels[i % len(labels)])
        task_labels: tuple[int, ...] = (digit,)
        if tasks == 2:
            task_labels += (-1 if i % 3 == 2 else digit % 2,)
        items.append((encode_image(images[i % len(images)], fmt), task_labels))
    return items


DIGIT_TASKS = (("digit", tuple(str(d) for d in range(10))), ("parity", ("even", "odd")))

_DIGITS_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _digits(size: int) -> tuple[np.ndarray, np.ndarray]:
    if size not in _DIGITS_CACHE:
        from services.demo_data import load_digits

        images, labels, _ = load_digits(size)
        _DIGITS_CACHE[size] = (images, labels)
    return _DIGITS_CACHE[size]


def oversample(items: Sequence[Item], times: Iterable[int]) -> list[Item]:
    """Repeats item i times[i] times, interleaved the way a balanced, shuffled list has them."""
    out: list[Item] = []
    for item, n in zip(items, times, strict=True):
        out.extend([item] * n)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def small_digits_records(store: ObjectStore, dataset_id: str = "digits"):
    """240 16-px digits as a dataset (192 train, 48 val, no test) and its records build, in `store`: the
    smallest data a trainer run takes. Returns the build (its `prefix` is the records URI's key)."""
    from services.tfrecords import builder  # TensorFlow-free, but only the tests that train need it

    items = digits_items(240, size=16)
    write_dataset(store, dataset_id, {"train": items[:192], "val": items[192:], "test": []}, DIGIT_TASKS[:1])
    return builder.RecordsBuilder(workers=1).build(store, dataset_id, builder.BuildOptions(min_shards=2))
