"""The behaviour every ObjectStore adapter must show.

A test module subclasses ObjectStoreContract as Test<Adapter> and provides a `store` fixture that
yields an empty store; pytest collects the inherited test methods. Keys used here are valid on every
adapter (none is both an object and a prefix of another key, which a local directory cannot hold).
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument, NotFound
from services.common.storage import PART_SIZE, ObjectInfo, ObjectNotFound, ObjectStore, VersionMismatch

ALL_BYTE_VALUES = bytes(range(256)) * 4


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class TrickleStream:
    """A non-seekable stream of unknown length that hands out at most `max_read` bytes per read()."""

    def __init__(self, data: bytes, max_read: int = 100_000):
        self._data, self._pos, self._max_read = data, 0, max_read

    def read(self, n: int = -1) -> bytes:
        n = self._max_read if n < 0 else min(n, self._max_read)
        chunk = self._data[self._pos:self._pos + n]
        self._pos += len(chunk)
        return chunk


BAD_KEYS = ["", "../x", "/abs", "a/../../b", "a/..", "./a", "a//b", "a/", "a\\b", "a\x00b",
            ".classforge/x", "k" * 1025]


class ObjectStoreContract:
    @pytest.mark.parametrize("data", [b"", b"hello\n", ALL_BYTE_VALUES, random.Random(1).randbytes(300_000)],
                             ids=["empty", "text", "all-byte-values", "300KB"])
    def test_put_bytes_then_get_bytes_is_byte_identical(self, store: ObjectStore, data: bytes):
        info = store.put_bytes("blobs/one.bin", data)
        assert info == ObjectInfo("blobs/one.bin", len(data), sha256(data))
        assert store.get_bytes("blobs/one.bin") == data
        assert store.stat("blobs/one.bin") == info

    def test_put_file_and_get_file_stream_an_object_larger_than_several_parts(self, store, tmp_path):
        source = tmp_path / "source.bin"
        data = os.urandom(40 * 1024 * 1024 + 12_345)
        source.write_bytes(data)
        assert len(data) > 2 * PART_SIZE
        expected = ObjectInfo("records/big.bin", len(data), sha256(data))
        del data

        assert store.put_file("records/big.bin", source) == expected
        assert store.stat("records/big.bin") == expected

        target = tmp_path / "download" / "nested" / "big.bin"
        assert store.get_file("records/big.bin", target) == expected
        assert target.stat().st_size == expected.size
        assert file_sha256(target) == expected.sha256
        assert sorted(os.listdir(target.parent)) == ["big.bin"]  # no temp file left beside it

    def test_get_file_replaces_an_existing_file(self, store, tmp_path):
        target = tmp_path / "out.txt"
        target.write_bytes(b"old content that is longer than the new one")
        store.put_bytes("x.txt", b"new")
        assert store.get_file("x.txt", str(target)) == ObjectInfo("x.txt", 3, sha256(b"new"))
        assert target.read_bytes() == b"new"

    @pytest.mark.parametrize("size", [0, 70_000, PART_SIZE + 1, PART_SIZE + 3_000_000],
                             ids=["empty", "small", "one-part-and-a-byte", "two-parts"])
    def test_put_stream_of_unknown_length(self, store, size):
        data = random.Random(size).randbytes(size)
        info = store.put_stream("streams/s.bin", TrickleStream(data), content_type="application/x-test")
        assert info == ObjectInfo("streams/s.bin", size, sha256(data))
        assert store.stat("streams/s.bin") == info
        assert store.get_bytes("streams/s.bin") == data

    def test_overwrite_replaces_content_size_and_checksum(self, store):
        store.put_bytes("a/obj", b"first version, rather long")
        info = store.put_bytes("a/obj", b"second")
        assert info == ObjectInfo("a/obj", 6, sha256(b"second"))
        assert store.stat("a/obj") == info
        assert store.get_bytes("a/obj") == b"second"
        assert [i.key for i in store.list("a/")] == ["a/obj"]

    def test_stat_reports_size_and_the_recorded_sha256(self, store):
        store.put_bytes("reports/r.json", b'{"accuracy": 0.9}', content_type="application/json")
        assert store.stat("reports/r.json") == ObjectInfo("reports/r.json", 17, sha256(b'{"accuracy": 0.9}'))

    def test_exists(self, store):
        store.put_bytes("d/x", b"1")
        assert store.exists("d/x") is True
        assert store.exists("d/y") is False
        assert store.exists("d") is False  # a prefix is not an object
        assert store.exists("d/x/z") is False

    def test_open_streams_the_content(self, store):
        data = random.Random(7).randbytes(3 * 1024 * 1024 + 5)
        store.put_bytes("m/weights.bin", data)
        chunks = []
        with store.open("m/weights.bin") as stream:
            while chunk := stream.read(65536):
                chunks.append(chunk)
        assert b"".join(chunks) == data

    def test_open_may_stop_early(self, store):
        store.put_bytes("m/w", b"abcdef" * 100_000)
        with store.open("m/w") as stream:
            assert stream.read(6) == b"abcdef"
        assert store.get_bytes("m/w") == b"abcdef" * 100_000  # still readable afterwards

    KEYS = ["a.txt", "a/b/c", "a/b/d/e", "a/b1", "a/bc/d", "a/c", "B/upper", "b/x/y/z", "é/ünï côde"]

    def _put_keys(self, store) -> dict[str, ObjectInfo]:
        infos = {}
        for i, key in enumerate(random.Random(3).sample(self.KEYS, len(self.KEYS))):
            infos[key] = store.put_bytes(key, key.encode() * (i + 1))
        return infos

    def test_list_is_recursive_and_sorted_by_key(self, store):
        infos = self._put_keys(store)
        listed = list(store.list())
        assert [i.key for i in listed] == ["B/upper", "a.txt", "a/b/c", "a/b/d/e", "a/b1", "a/bc/d", "a/c",
                                           "b/x/y/z", "é/ünï côde"]
        assert listed == [infos[i.key] for i in listed]  # sizes and sha256 as put

    @pytest.mark.parametrize(("prefix", "expected"), [
        ("a/b", ["a/b/c", "a/b/d/e", "a/b1", "a/bc/d"]),  # a raw string prefix, as in S3
        ("a/b/", ["a/b/c", "a/b/d/e"]),  # end with '/' for one "directory"
        ("a", ["a.txt", "a/b/c", "a/b/d/e", "a/b1", "a/bc/d", "a/c"]),
        ("a/c", ["a/c"]),
        ("b/x/y/", ["b/x/y/z"]),
        ("é/", ["é/ünï côde"]),
        ("zzz", []),
        ("a/b/c/", []),
    ])
    def test_list_with_a_prefix(self, store, prefix, expected):
        infos = self._put_keys(store)
        assert list(store.list(prefix)) == [infos[key] for key in expected]

    @pytest.mark.parametrize("prefix", ["../", "/abs", "a/../b", "a//", "a\\b"])
    def test_list_rejects_a_bad_prefix_at_the_call(self, store, prefix):
        with pytest.raises(InvalidArgument) as caught:
            store.list(prefix)
        assert caught.value.field == "prefix"

    def test_delete_removes_only_that_object_and_is_idempotent(self, store):
        store.put_bytes("j/1/a", b"a")
        store.put_bytes("j/1/b", b"b")
        assert store.delete("j/1/a") is None
        assert store.exists("j/1/a") is False
        with pytest.raises(ObjectNotFound):
            store.get_bytes("j/1/a")
        assert [i.key for i in store.list("j/")] == ["j/1/b"]
        store.delete("j/1/a")  # again: no error
        store.delete("never/existed")
        store.delete("j/1/b")
        assert list(store.list()) == []

    def test_a_deleted_key_can_be_written_again(self, store):
        store.put_bytes("p/q/r", b"1")
        store.delete("p/q/r")
        assert store.put_bytes("p/q/r", b"22") == ObjectInfo("p/q/r", 2, sha256(b"22"))
        assert store.get_bytes("p/q/r") == b"22"

    def test_delete_prefix_deletes_what_list_lists_and_counts(self, store):
        self._put_keys(store)
        assert store.delete_prefix("a/b/") == 2
        assert [i.key for i in store.list("a/")] == ["a/b1", "a/bc/d", "a/c"]
        assert store.delete_prefix("a/b") == 2
        assert [i.key for i in store.list()] == ["B/upper", "a.txt", "a/c", "b/x/y/z", "é/ünï côde"]
        assert store.delete_prefix("nothing/here/") == 0
        assert store.delete_prefix("a") == 2
        assert [i.key for i in store.list()] == ["B/upper", "b/x/y/z", "é/ünï côde"]

    def test_delete_prefix_refuses_the_empty_prefix(self, store):
        store.put_bytes("keep", b"1")
        with pytest.raises(InvalidArgument) as caught:
            store.delete_prefix("")
        assert caught.value.field == "prefix"
        assert store.exists("keep")

    def test_delete_prefix_of_many_objects(self, store):
        for i in range(120):
            store.put_bytes(f"many/{i:03d}", b"x")
        store.put_bytes("manyother", b"y")
        assert store.delete_prefix("many/") == 120
        assert [i.key for i in store.list("many")] == ["manyother"]

    def test_a_missing_key_raises_object_not_found_naming_the_key(self, store, tmp_path):
        store.put_bytes("present/x", b"1")
        target = tmp_path / "never.bin"
        calls = {
            "get_bytes": lambda key: store.get_bytes(key),
            "get_file": lambda key: store.get_file(key, target),
            "stat": lambda key: store.stat(key),
            "open": lambda key: store.open(key).__enter__(),
        }
        for name, call in calls.items():
            for key in ["missing/key.bin", "present", "present/x/deeper"]:
                with pytest.raises(ObjectNotFound) as caught:
                    call(key)
                assert isinstance(caught.value, NotFound), name
                assert caught.value.ident == key, name
                assert str(caught.value) == f"object {key!r} not found", name
        assert not target.exists()

    @pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
    def test_a_bad_key_is_rejected_by_every_operation(self, store, key, tmp_path):
        source = tmp_path / "src"
        source.write_bytes(b"data")
        calls = [
            lambda: store.put_bytes(key, b"data"),
            lambda: store.put_file(key, source),
            lambda: store.put_stream(key, TrickleStream(b"data")),
            lambda: store.get_bytes(key),
            lambda: store.get_file(key, tmp_path / "dst"),
            lambda: store.open(key).__enter__(),
            lambda: store.stat(key),
            lambda: store.exists(key),
            lambda: store.delete(key),
            lambda: store.uri(key),
        ]
        for call in calls:
            with pytest.raises(InvalidArgument) as caught:
                call()
            assert caught.value.field == "key"
        assert list(store.list()) == []
        assert not (tmp_path / "dst").exists()

    @pytest.mark.parametrize("key", ["a", "models/job-1/saved_model.pb", "datasets/d 1/ü%20x#y?.jpg"])
    def test_uri_round_trips_through_key_from_uri(self, store, key):
        uri = store.uri(key)
        assert uri.startswith(("s3://", "file:///"))
        assert store.key_from_uri(uri) == key

    @pytest.mark.parametrize("uri", ["http://host/a", "s3://some-other-bucket/a", "file:///elsewhere/a", "a",
                                     ""])
    def test_key_from_uri_rejects_a_uri_of_another_store(self, store, uri):
        with pytest.raises(InvalidArgument) as caught:
            store.key_from_uri(uri)
        assert caught.value.field == "uri"

    def test_key_from_uri_rejects_the_store_itself(self, store):
        with pytest.raises(InvalidArgument) as caught:
            store.key_from_uri(store.uri("x")[:-1])
        assert caught.value.field == "uri"

    def test_ping_succeeds_and_the_store_is_usable(self, store):
        assert store.ping() is None
        store.ping()
        assert store.put_bytes("after/ping", b"ok").size == 2
        assert store.get_bytes("after/ping") == b"ok"

    # ------------------------------------------------------------------ compare-and-set (leases)

    def test_put_bytes_if_absent_creates_once_then_refuses(self, store):
        version = store.put_bytes_if("state/lease", b"first", None)
        assert store.get_versioned("state/lease") == (b"first", version)
        with pytest.raises(VersionMismatch):
            store.put_bytes_if("state/lease", b"second", None)
        assert store.get_bytes("state/lease") == b"first"

    def test_put_bytes_if_replaces_only_the_version_read(self, store):
        first = store.put_bytes_if("state/lease", b"one", None)
        second = store.put_bytes_if("state/lease", b"two", first)
        assert second != first
        with pytest.raises(VersionMismatch):  # a writer still holding the old version is refused
            store.put_bytes_if("state/lease", b"stale", first)
        assert store.get_versioned("state/lease") == (b"two", second)
        assert store.get_bytes("state/lease") == b"two"  # the sha256 is recorded like any write's

    def test_put_bytes_if_sees_a_plain_write_as_a_new_version(self, store):
        version = store.put_bytes_if("state/lease", b"one", None)
        store.put_bytes("state/lease", b"two")
        with pytest.raises(VersionMismatch):
            store.put_bytes_if("state/lease", b"three", version)
        assert store.get_bytes("state/lease") == b"two"

    def test_put_bytes_if_with_a_version_of_a_missing_object_is_refused(self, store):
        version = store.put_bytes_if("state/lease", b"one", None)
        store.delete("state/lease")
        with pytest.raises(VersionMismatch):
            store.put_bytes_if("state/lease", b"two", version)
        assert not store.exists("state/lease")

    def test_get_versioned_of_a_missing_object_is_not_found(self, store):
        with pytest.raises(ObjectNotFound):
            store.get_versioned("state/none")

    def test_only_one_of_racing_creators_wins(self, store):
        from concurrent.futures import ThreadPoolExecutor

        def create(i: int) -> bool:
            try:
                store.put_bytes_if("state/race", str(i).encode(), None)
                return True
            except VersionMismatch:
                return False

        with ThreadPoolExecutor(8) as pool:
            won = list(pool.map(create, range(8)))
        assert won.count(True) == 1
        assert store.get_bytes("state/race") == str(won.index(True)).encode()
