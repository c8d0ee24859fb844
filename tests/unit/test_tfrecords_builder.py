"""Building records from a prepared dataset (datasets/<id>/ in, records/<build_id>/ out): round trip
through the reader, shard sizing, manifest, crash safety, idempotence, re-encoding, dataset errors."""

import hashlib
import io
import json
import math

import pytest
from PIL import Image

from services.common import image_hash
from services.common.errors import FailedPrecondition, NotFound
from services.common.records import example
from services.common.records.reader import RecordsReader
from services.common.storage import LocalObjectStore
from services.tfrecords.builder import MANIFEST, BuildOptions, RecordsBuilder, shard_name
from services.tfrecords.dataset import DatasetError
from tests.support.sample_dataset import DIGIT_TASKS, digits_items, oversample, write_dataset


class FlakyStore(LocalObjectStore):
    """A local store whose n-th shard upload fails (a crash mid-build), and that counts writes."""

    def __init__(self, root, fail_at: int | None = None):
        super().__init__(root)
        self.fail_at, self.uploads, self.writes = fail_at, 0, 0

    def put_file(self, key, path, content_type="application/octet-stream"):
        self.uploads += 1
        if self.fail_at is not None and self.uploads == self.fail_at:
            raise OSError("disk on fire")
        return super().put_file(key, path, content_type)

    def put_stream(self, key, stream, content_type="application/octet-stream"):
        self.writes += 1
        return super().put_stream(key, stream, content_type)


@pytest.fixture(scope="module")
def items():
    return digits_items(90, tasks=2)


@pytest.fixture
def store(tmp_path, items):
    store = LocalObjectStore(tmp_path / "store")
    train = oversample(items[:60], [1 + (i % 3) for i in range(60)])  # duplicates, as balancing makes them
    write_dataset(store, "mt", {"train": train, "val": items[60:80], "test": items[80:]}, DIGIT_TASKS)
    return store


def _listed(store, split):
    """(key, labels) per line of the dataset's list, in order."""
    lines = store.get_bytes(f"datasets/mt/{split}.list").decode().splitlines()
    return [(line.split()[0], tuple(int(v) for v in line.split()[1:])) for line in lines]


def _read_back(reader, split):
    return [(item["filename"].decode(), tuple(item["labels"].tolist()), item["encoded"])
            for item in reader.dataset(split, parallel_reads=1, decode=False).as_numpy_iterator()]


def test_round_trip_every_entry_comes_back_in_list_order_with_its_labels_and_bytes(store):
    # inline_below=0 and two workers: the real worker processes, not the in-process path
    result = RecordsBuilder(workers=2, inline_below=0).build(store, "mt", BuildOptions(min_shards=3))
    assert result.built and result.prefix == f"records/{result.build_id}"
    reader = RecordsReader(store, result.prefix)
    for split in ("train", "val", "test"):
        listed = _listed(store, split)
        back = _read_back(reader, split)
        assert [(k, labels) for k, labels, _ in back] == listed  # each line once, in order: duplicates kept
        for key, _, data in back:
            assert data == store.get_bytes(f"datasets/mt/{key}")  # identical bytes
        assert reader.num_examples(split) == len(listed)
    assert any(labels[1] == -1 for _, labels in _listed(store, "train"))  # the unknown label made the trip


def _dhashes(reader, split):
    """(filename, image/dhash or None) per record, read with the reader's dhash=True parsing."""
    return [(item["filename"].decode(), int(item["dhash"]) & (2**64 - 1) if item["has_dhash"] else None)
            for batch in reader.dataset(split, parallel_reads=1, decode=False, batch_size=7,
                                        dhash=True).as_numpy_iterator()
            for item in ({k: v[i] for k, v in batch.items()} for i in range(len(batch["filename"])))]


@pytest.mark.parametrize("workers", [1, 2])
def test_the_datasets_hashes_become_image_dhash(tmp_path, items, workers):
    store = LocalObjectStore(tmp_path / "store")
    write_dataset(store, "hashed", {"train": items[:30], "val": items[30:40]}, DIGIT_TASKS, hashes=True)
    result = RecordsBuilder(workers=workers, inline_below=0).build(store, "hashed", BuildOptions(min_shards=2))
    assert example.DHASH in result.manifest["features"]
    reader = RecordsReader(store, result.prefix)
    for split in ("train", "val"):
        back = _dhashes(reader, split)
        assert back and all(value == image_hash.dhash(store.get_bytes(f"datasets/hashed/{key}")) for key, value in back)


def test_a_dataset_without_hashes_gives_records_without_image_dhash(store):
    result = RecordsBuilder(workers=1).build(store, "mt", BuildOptions(min_shards=2))
    assert example.DHASH not in result.manifest["features"]
    assert {value for _, value in _dhashes(RecordsReader(store, result.prefix), "val")} == {None}


def test_re_encoded_records_carry_the_hash_of_the_new_bytes(tmp_path, items):
    store = LocalObjectStore(tmp_path / "store")
    write_dataset(store, "hashed", {"train": items[:10], "val": items[10:20]}, DIGIT_TASKS, hashes=True)
    result = RecordsBuilder(workers=1).build(store, "hashed", BuildOptions(max_side=8, jpeg_quality=75))
    reader = RecordsReader(store, result.prefix)
    encoded = [item["encoded"] for item in reader.dataset("val", parallel_reads=1, decode=False).as_numpy_iterator()]
    assert [value for _, value in _dhashes(reader, "val")] == [image_hash.dhash(data) for data in encoded]


def test_in_process_and_worker_builds_write_identical_shards(store, tmp_path):
    one = RecordsBuilder(workers=1).build(store, "mt", BuildOptions(min_shards=2),
                                          out_store=LocalObjectStore(tmp_path / "a"))
    two = RecordsBuilder(workers=2, inline_below=0).build(store, "mt", BuildOptions(min_shards=2),
                                                          out_store=LocalObjectStore(tmp_path / "b"))
    assert one.build_id == two.build_id
    assert one.manifest["splits"] == two.manifest["splits"]


def test_shards_are_sized_by_bytes_and_named_n_of_count(store):
    shard_bytes = 4096
    result = RecordsBuilder(workers=1).build(store, "mt", BuildOptions(shard_bytes=shard_bytes, min_shards=1))
    reader = RecordsReader(store, result.prefix)
    for split in ("train", "val", "test"):
        shards = result.manifest["splits"][split]["shards"]
        total = sum(s["bytes"] for s in shards)
        records = [r for path in reader.local_shards(split) for r in _records(path)]
        largest = max(len(r) + 16 for r in records)
        assert len(shards) >= math.ceil(total / shard_bytes) > 1
        assert len(shards) <= math.ceil(total / shard_bytes) + 1  # the plan's estimate is within a few bytes
        assert all(s["bytes"] <= shard_bytes + largest for s in shards)
        assert [s["file"] for s in shards] == [shard_name(split, i, len(shards)) for i in range(len(shards))]


def test_at_least_min_shards_per_split_but_never_an_empty_shard(store):
    result = RecordsBuilder(workers=1).build(store, "mt", BuildOptions(min_shards=15))
    counts = {split: len(s["shards"]) for split, s in result.manifest["splits"].items()}
    assert counts == {"train": 15, "val": 15, "test": 10}  # test has 10 examples: one shard each
    assert all(s["examples"] >= 1 for split in result.manifest["splits"].values() for s in split["shards"])


def _records(path):
    with open(path, "rb") as handle:
        return list(example.iter_records(handle))


def test_manifest_has_checksums_counts_labels_and_options(store):
    options = BuildOptions(min_shards=2)
    result = RecordsBuilder(workers=1).build(store, "mt", options)
    manifest = json.loads(store.get_bytes(f"{result.prefix}/{MANIFEST}"))
    assert manifest == result.manifest
    assert manifest["labels"] == json.loads(store.get_bytes("datasets/mt/labels.json"))
    assert manifest["options"] == options.as_dict() and manifest["dataset_id"] == "mt"
    for split, info in manifest["splits"].items():
        listed = _listed(store, split)
        assert info["examples"] == len(listed) == sum(s["examples"] for s in info["shards"])
        for shard in info["shards"]:
            data = store.get_bytes(f"{result.prefix}/{shard['file']}")
            assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]
            assert len(_records_of(data)) == shard["examples"]
        assert manifest["counts"][split] == len(listed)
        digits = manifest["class_counts"]["digit"][split]
        assert list(digits) == [str(d) for d in range(10)] and sum(digits.values()) == len(listed)
        assert digits["3"] == sum(1 for _, labels in listed if labels[0] == 3)
        assert manifest["unknown_counts"]["digit"][split] == 0
        assert manifest["unknown_counts"]["parity"][split] == sum(1 for _, labels in listed if labels[1] == -1)
        assert manifest["class_counts"]["parity"][split]["odd"] == sum(1 for _, labels in listed if labels[1] == 1)
    objects = {info.key.rsplit("/", 1)[1] for info in store.list(result.prefix + "/")}
    assert objects == {MANIFEST} | {s["file"] for i in manifest["splits"].values() for s in i["shards"]}


def _records_of(data):
    return list(example.iter_records(io.BytesIO(data)))


def test_a_crash_mid_build_publishes_nothing_and_a_retry_rebuilds(tmp_path, store):
    flaky = FlakyStore(store.root, fail_at=3)
    with pytest.raises(OSError, match="disk on fire"):
        RecordsBuilder(workers=1).build(flaky, "mt", BuildOptions(min_shards=2))
    records = list(store.list("records/"))
    assert records and not any(info.key.endswith(MANIFEST) for info in records)  # shards, but no manifest
    with pytest.raises(FailedPrecondition, match="no manifest.json"):
        RecordsReader(store, records[0].key.rsplit("/", 1)[0])
    # An older crash under another plan left a stray object: the retry removes it.
    prefix = records[0].key.rsplit("/", 1)[0]
    store.put_bytes(f"{prefix}/train-00000-of-00099.tfrecord", b"stale")
    result = RecordsBuilder(workers=1).build(FlakyStore(store.root), "mt", BuildOptions(min_shards=2))
    assert result.built and result.prefix == prefix
    assert not store.exists(f"{prefix}/train-00000-of-00099.tfrecord")
    assert RecordsReader(store, prefix).num_examples("train") == len(_listed(store, "train"))


def test_a_build_whose_manifest_exists_is_not_built_again(store):
    first = RecordsBuilder(workers=1).build(store, "mt")
    counting = FlakyStore(store.root)
    again = RecordsBuilder(workers=1).build(counting, "mt")
    assert not again.built and again.manifest == first.manifest
    assert counting.uploads == counting.writes == 0
    forced = RecordsBuilder(workers=1).build(counting, "mt", force=True)
    assert forced.built and counting.uploads > 0


def test_reencode_honours_max_side_and_writes_jpeg(store):
    result = RecordsBuilder(workers=1).build(store, "mt", BuildOptions(max_side=8, jpeg_quality=75))
    for item in RecordsReader(store, result.prefix).dataset("val").as_numpy_iterator():
        with Image.open(io.BytesIO(item["encoded"])) as image:
            assert image.format == "JPEG" and max(image.size) <= 8
        assert item["image"].shape == (8, 8, 3)  # 16x16 digits halved, decoded to 3 channels
    assert result.manifest["options"]["max_side"] == 8


def test_a_damaged_image_fails_the_build_without_a_manifest(store):
    key = _listed(store, "val")[0][0]
    path = store.root / "datasets/mt" / key
    path.write_bytes(path.read_bytes()[:-5] + b"XXXXX")  # content no longer matches its name
    with pytest.raises(DatasetError, match=f"{key} is damaged"):
        RecordsBuilder(workers=1).build(store, "mt")
    assert not [i for i in store.list("records/") if i.key.endswith(MANIFEST)]


def test_a_missing_image_fails_before_anything_is_written(store):
    key = _listed(store, "test")[0][0]
    store.delete(f"datasets/mt/{key}")
    with pytest.raises(DatasetError, match=f"lists images that are not stored: {key}"):
        RecordsBuilder(workers=1).build(store, "mt")
    assert list(store.list("records/")) == []


def test_dataset_problems_name_what_is_wrong(store, items):
    with pytest.raises(NotFound, match="dataset 'nope' not found"):
        RecordsBuilder().build(store, "nope")
    write_dataset(store, "half", {"train": items[:3]}, DIGIT_TASKS, complete=False)
    with pytest.raises(FailedPrecondition, match="'half' is incomplete: datasets/half/manifest.json is missing"):
        RecordsBuilder().build(store, "half")
    store.put_bytes("datasets/mt/val.list", b"images/ab/x.png 3\n")
    with pytest.raises(DatasetError, match="val.list line 1: expected an image path and 2 class id"):
        RecordsBuilder().build(store, "mt")
    store.put_bytes("datasets/mt/val.list", b"images/ab/x.png 3 7\n")
    with pytest.raises(DatasetError, match=r"val.list line 1: class id 7 of task 1 is outside 0..1"):
        RecordsBuilder().build(store, "mt")
    store.put_bytes("datasets/mt/val.list", b"../../etc/passwd 3 1\n")
    with pytest.raises(DatasetError, match="must be under images/"):
        RecordsBuilder().build(store, "mt")
