"""Streaming ingest and records builds (#19 item 4) must not change a single output byte.

A fixed, generated source with every case ingest handles (valid images in three label folders, exact
copies kept once, copies labelled differently left out as conflicts, files that are not images,
oversampling of a small class) is prepared and built; the sha256 of every output object is compared
with the digests the code produced before the streaming rewrite (recorded in GOLDEN). The manifests
carry a creation time and a duration, so they are compared without those fields. GOLDEN_FILE holds
the digests of the code before the rewrite (commit 88ad1e2 plus bench.scale, which the source uses).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bench.scale import _png
from services.common.dataset_options import IngestOptions
from services.common.storage import LocalObjectStore
from services.ingest.prepare import prepare_dataset
from services.tfrecords.builder import BuildOptions, RecordsBuilder

# A manifest's creation time and duration, and the records manifest's hash of the dataset manifest
# (which holds that time); the store's own sidecars (.classforge/) hold write times too.
VOLATILE = {"created_at", "duration_seconds", "build_seconds", "dataset_manifest_sha256"}
GOLDEN_FILE = Path(__file__).with_name("flat_outputs_golden.json")


def _source(root: Path) -> None:
    import random

    rng = random.Random(7)
    sizes = {"cat": 23, "dog": 9, "bird/small": 4}  # bird/small: a nested label; dog and bird get oversampled
    made: list[tuple[str, bytes]] = []
    for label, count in sizes.items():
        folder = root / label
        folder.mkdir(parents=True)
        for n in range(count):
            data = _png(8 + n % 5, rng.randbytes((8 + n % 5) ** 2 * 3))
            (folder / f"{n:03d}.png").write_bytes(data)
            made.append((label, data))
    (root / "cat" / "copy-of-000.png").write_bytes(made[0][1])  # a duplicate, same label: kept once
    (root / "dog" / "also-a-cat.png").write_bytes(made[1][1])  # same bytes, other label: a conflict
    (root / "cat" / "notes.png").write_bytes(b"not an image at all")  # rejected
    (root / "dog" / "truncated.png").write_bytes(made[30][1][:40])  # rejected


def _digests(store_root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(p for p in store_root.rglob("*") if p.is_file()):
        key = path.relative_to(store_root).as_posix()
        if key.startswith(".classforge/"):
            continue
        data = path.read_bytes()
        if key.endswith("manifest.json"):
            doc = json.loads(data)
            for name in VOLATILE:
                doc.pop(name, None)
            data = json.dumps(doc, sort_keys=True).encode()
        out[key] = hashlib.sha256(data).hexdigest()
    return out


def outputs(tmp_path: Path) -> dict[str, str]:
    _source(tmp_path / "source")
    store = LocalObjectStore(tmp_path / "store")
    prepare_dataset(tmp_path / "source", store, "datasets/flat/", IngestOptions(seed=3, val_fraction=0.2,
                                                                                 test_fraction=0.1),
                    dataset_id="flat", source={"kind": "local_path", "path": "/fixed/for/the/test"}, workers=1)
    # min_shards 3 and small shards: several shards per split, several chunks per shard
    RecordsBuilder(workers=1).build(store, "flat", BuildOptions(shard_bytes=2048, min_shards=3))
    return _digests(tmp_path / "store")


def test_outputs_are_the_ones_before_streaming(tmp_path):
    got = outputs(tmp_path)
    golden = json.loads(GOLDEN_FILE.read_text())
    assert sorted(got) == sorted(golden)  # the same objects
    assert {k: v for k, v in got.items() if golden[k] != v} == {}  # with the same bytes


def test_records_from_worker_processes_are_the_same_bytes(tmp_path):
    """The pool path takes its chunks lazily too: the shards it writes equal the golden ones."""
    _source(tmp_path / "source")
    store = LocalObjectStore(tmp_path / "store")
    prepare_dataset(tmp_path / "source", store, "datasets/flat/", IngestOptions(seed=3, val_fraction=0.2,
                                                                                 test_fraction=0.1),
                    dataset_id="flat", source={"kind": "local_path", "path": "/fixed/for/the/test"}, workers=1)
    RecordsBuilder(workers=2, inline_below=0).build(store, "flat", BuildOptions(shard_bytes=2048, min_shards=3),
                                                    out_store=LocalObjectStore(tmp_path / "pool"))
    golden = json.loads(GOLDEN_FILE.read_text())
    got = _digests(tmp_path / "pool")
    assert got and got == {k: v for k, v in golden.items() if k.startswith("records/")}
