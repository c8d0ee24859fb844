"""The reader the trainer and evaluator use: order options, batching and decoding, and the local shard
cache for a remote store (downloaded once, verified against the manifest, reused)."""

import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf

from services.common import image_hash
from services.common.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound
from services.common.records import example
from services.common.records.reader import RecordsReader, parse_example, parse_examples
from services.common.storage import LocalObjectStore, ObjectStore
from services.tfrecords.builder import BuildOptions, RecordsBuilder
from tests.support.sample_dataset import DIGIT_TASKS, digits_items, write_dataset


class RemoteStore(ObjectStore):
    """Stands in for MinIO: any store but a local one (so the reader downloads shards); counts downloads."""

    def __init__(self, local: LocalObjectStore):
        self.local, self.downloads = local, []

    def get_file(self, key, path):
        self.downloads.append(key)
        return super().get_file(key, path)

    def put_bytes(self, key, data, content_type=""):
        return self.local.put_bytes(key, data)

    def put_file(self, key, path, content_type=""):
        return self.local.put_file(key, path)

    def put_stream(self, key, stream, content_type=""):
        return self.local.put_stream(key, stream)

    def get_versioned(self, key):
        return self.local.get_versioned(key)

    def put_bytes_if(self, key, data, version, content_type=""):
        return self.local.put_bytes_if(key, data, version)

    def stat(self, key):
        return self.local.stat(key)

    def delete(self, key):
        self.local.delete(key)

    def ping(self):
        self.local.ping()

    def uri(self, key):
        return f"s3://bucket/{key}"

    def key_from_uri(self, uri):
        return uri.removeprefix("s3://bucket/")

    def _open(self, key):
        return self.local._open(key)

    def _list(self, prefix):
        return self.local._list(prefix)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    store = LocalObjectStore(tmp_path_factory.mktemp("store"))
    items = digits_items(120)
    write_dataset(store, "digits", {"train": items[:100], "val": items[100:]}, DIGIT_TASKS[:1])
    result = RecordsBuilder(workers=1).build(store, "digits", BuildOptions(min_shards=4))
    return store, result


def _ids(ds):
    return [item["source_id"].decode() for item in ds.as_numpy_iterator()]


def test_list_order_with_one_reader_and_the_same_order_every_time_when_deterministic(built):
    store, result = built
    reader = RecordsReader(store, result.prefix)
    listed = [line.split()[0] for line in store.get_bytes("datasets/digits/train.list").decode().splitlines()]
    in_order = _ids(reader.dataset("train", parallel_reads=1, decode=False))
    assert [f"images/{i[:2]}/{i}.png" for i in in_order] == listed
    interleaved = _ids(reader.dataset("train", parallel_reads=4))
    assert interleaved == _ids(reader.dataset("train", parallel_reads=4)) and sorted(interleaved) == sorted(in_order)
    assert interleaved != in_order  # round robin over the 4 shards
    shuffled = _ids(reader.dataset("train", shuffle=True, seed=7))
    assert shuffled == _ids(reader.dataset("train", shuffle=True, seed=7))
    assert shuffled != interleaved and sorted(shuffled) == sorted(in_order)
    assert shuffled != _ids(reader.dataset("train", shuffle=True, seed=8))


def test_batches_hold_decoded_uint8_images_labels_and_ids(built):
    store, result = built
    reader = RecordsReader(store, result.prefix)
    batches = list(reader.dataset("val", batch_size=8).as_numpy_iterator())
    assert [len(b["labels"]) for b in batches] == [8, 8, 4]
    first = batches[0]
    assert first["image"].dtype == np.uint8 and first["image"].shape == (8, 16, 16, 3)
    assert first["labels"].shape == (8, 1) and first["labels"].dtype == np.int64
    assert first["source_id"].shape == (8,) and first["filename"][0].startswith(b"images/")
    resized = next(reader.dataset("val", batch_size=4, image_size=(24, 20), drop_remainder=True).as_numpy_iterator())
    assert resized["image"].shape == (4, 24, 20, 3)
    single = next(reader.dataset("val", image_size=32).as_numpy_iterator())
    assert single["image"].shape == (32, 32, 3)
    assert list(reader.dataset("test", batch_size=4).as_numpy_iterator()) == []  # an empty split reads as empty


def test_manifest_facts(built):
    store, result = built
    reader = RecordsReader(store, f"{result.prefix}/")
    assert reader.build_id == result.build_id and reader.tasks == [("digit", [str(d) for d in range(10)])]
    assert reader.num_examples("train") == 100 and reader.num_examples("test") == 0
    counts = reader.class_counts("train")
    assert list(counts) == ["digit"] and sum(counts["digit"].values()) == 100
    assert reader.unknown_counts("val") == {"digit": 0}
    with pytest.raises(InvalidArgument, match="split: 'dev' is not one of train, val, test"):
        reader.num_examples("dev")
    assert RecordsReader(store, result.build_id).build_id == result.build_id  # a bare build id works too
    assert RecordsReader(store, store.uri(result.prefix)).build_id == result.build_id  # and the event's URI


def test_remote_shards_are_downloaded_once_into_the_cache_and_verified(built, tmp_path):
    store, result = built
    remote = RemoteStore(store)
    cache = tmp_path / "cache"
    reader = RecordsReader(remote, remote.uri(result.prefix), cache_dir=cache)
    paths = reader.local_shards("train")
    assert len(remote.downloads) == 4 and all(p.startswith(str(cache / result.build_id)) for p in paths)
    assert len(_ids(reader.dataset("train"))) == 100

    again = RecordsReader(remote, result.prefix, cache_dir=cache)  # the evaluator after the trainer
    assert again.local_shards("train") == paths and len(remote.downloads) == 4

    with open(paths[1], "r+b") as handle:  # a damaged cached copy is replaced
        handle.seek(30)
        handle.write(b"\x00\x01\x02")
    os.utime(paths[1], ns=(1, 1))
    assert RecordsReader(remote, result.prefix, cache_dir=cache).local_shards("train") == paths
    assert len(remote.downloads) == 5 and remote.downloads[-1].endswith(os.path.basename(paths[1]))


def test_a_shard_that_does_not_match_the_manifest_is_refused(built, tmp_path):
    store, result = built
    reader = RecordsReader(RemoteStore(store), result.prefix, cache_dir=tmp_path / "c")
    reader.manifest["splits"]["val"]["shards"][0]["sha256"] = "0" * 64
    with pytest.raises(DataLoss, match="does not match its manifest"):
        reader.local_shards("val")
    local = RecordsReader(store, result.prefix)
    local.manifest["splits"]["val"]["shards"][0]["sha256"] = "0" * 64
    with pytest.raises(DataLoss, match="does not match its manifest"):
        local.local_shards("val")


def test_records_that_are_not_complete_are_not_read(built, tmp_path):
    store, _ = built
    with pytest.raises(NotFound, match="records 'records/digits-0123456789' not found"):
        RecordsReader(store, "records/digits-0123456789")
    store.put_bytes("records/digits-0123456789/train-00000-of-00001.tfrecord", b"")  # a crashed build
    with pytest.raises(FailedPrecondition, match="no manifest.json"):
        RecordsReader(store, "records/digits-0123456789")
    with pytest.raises(NotFound):
        RecordsReader.from_directory(tmp_path)


def test_image_dhash_is_parsed_where_present_and_flagged_where_absent():
    encoder = example.ExampleEncoder([["a", "b"]])
    values = [None, 5, 2**64 - 1, None, 2**63]
    serialized = [encoder.encode(encoded=b"x", image_format="png", height=1, width=1, filename=f"f{i}",
                                 source_id="ab", labels=(0,), dhash=value) for i, value in enumerate(values)]

    def unsigned(value) -> int:
        return int(value) & (2**64 - 1)

    for batch in (slice(None), slice(0, 1), slice(1, 3)):  # mixed, none present at all, all present
        parsed = parse_examples(tf.constant(serialized[batch]), 1, dhash=True)
        known = parsed["has_dhash"].numpy().tolist()
        assert known == [v is not None for v in values[batch]]
        hashes = [unsigned(h) if k else None for h, k in zip(parsed["dhash"].numpy(), known, strict=True)]
        assert hashes == values[batch]
    for one, value in zip(serialized, values, strict=True):
        parsed = parse_example(tf.constant(one), 1, dhash=True)
        assert bool(parsed["has_dhash"]) == (value is not None)
        assert (unsigned(parsed["dhash"]) if value is not None else int(parsed["dhash"])) == (value or 0)
    assert "dhash" not in parse_examples(tf.constant(serialized), 1) and "dhash" not in parse_example(serialized[0], 1)


def test_the_reader_gives_dhash_per_example_and_batched(tmp_path):
    store = LocalObjectStore(tmp_path / "store")
    items = digits_items(20)
    write_dataset(store, "hashed", {"train": items[:10], "val": items[10:]}, DIGIT_TASKS[:1], hashes=True)
    reader = RecordsReader(store, RecordsBuilder(workers=1).build(store, "hashed", BuildOptions(min_shards=2)).prefix)
    single = [(item["source_id"], int(item["dhash"]), bool(item["has_dhash"]))
              for item in reader.dataset("val", parallel_reads=1, decode=False, dhash=True).as_numpy_iterator()]
    batched = [(sid, int(h), bool(known))
               for batch in reader.dataset("val", parallel_reads=1, decode=False, dhash=True,
                                           batch_size=4).as_numpy_iterator()
               for sid, h, known in zip(batch["source_id"], batch["dhash"], batch["has_dhash"], strict=True)]
    assert single == batched and len(single) == 10 and all(known for _, _, known in single)
    expected = {hashlib.sha256(data).hexdigest(): image_hash.dhash(data) for data, _ in items[10:]}
    assert all(h & (2**64 - 1) == expected[sid.decode()] for sid, h, _ in single)
