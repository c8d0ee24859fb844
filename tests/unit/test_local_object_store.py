"""LocalObjectStore: the shared ObjectStore contract, plus what only a directory can get wrong
(escaping the root, partial files, bookkeeping files showing up), and open_object_store()."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument, Unavailable
from services.common.storage import LocalObjectStore, ObjectCorrupted, ObjectInfo, open_object_store
from services.common.storage.minio import MinioObjectStore
from tests.contracts.object_store_contract import ObjectStoreContract, sha256


class TestLocalObjectStore(ObjectStoreContract):
    @pytest.fixture
    def store(self, tmp_path):
        return LocalObjectStore(tmp_path / "store")


def files_under(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file() and not p.is_symlink()}


class FailingStream:
    """Yields `good` bytes, then fails as a dropped client connection would."""

    def __init__(self, good: int):
        self._left = good

    def read(self, n: int = -1) -> bytes:
        if self._left == 0:
            raise ConnectionResetError("client went away")
        chunk = b"x" * min(n if n > 0 else 65536, self._left)
        self._left -= len(chunk)
        return chunk


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(root) -> LocalObjectStore:
    return LocalObjectStore(root)


def test_keys_are_plain_files_under_root_and_uris_point_at_them(store, root):
    store.put_bytes("models/j1/1/saved_model.pb", b"graph")
    path = root / "models" / "j1" / "1" / "saved_model.pb"
    assert path.read_bytes() == b"graph"
    assert store.uri("models/j1/1/saved_model.pb") == path.resolve().as_uri()
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


@pytest.mark.parametrize("key", [
    "../outside/victim", "a/../../outside/victim", "/{outside}/victim", "link/victim", "link/new", "filelink",
    "link/../x", "..", "a/..\\..\\outside", "a\x00/../x",
], ids=repr)
def test_nothing_is_written_outside_root_whatever_the_key(tmp_path, store, root, key):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"precious")
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "filelink").symlink_to(outside / "victim")
    before = files_under(tmp_path)
    key = key.format(outside=outside)

    with pytest.raises(InvalidArgument) as put:
        store.put_bytes(key, b"evil")
    with pytest.raises(InvalidArgument) as put_stream:
        store.put_stream(key, io.BytesIO(b"evil"))
    with pytest.raises(InvalidArgument) as delete:
        store.delete(key)
    assert put.value.field == put_stream.value.field == delete.value.field == "key"
    assert files_under(tmp_path) == before
    assert (outside / "victim").read_bytes() == b"precious"


def test_listing_does_not_follow_links_out_of_root(tmp_path, store, root):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"precious")
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "filelink").symlink_to(outside / "victim")
    assert list(store.list()) == []
    assert list(store.list("link/")) == []
    assert store.delete_prefix("link/") == 0
    assert (outside / "victim").read_bytes() == b"precious"


def test_a_failed_write_leaves_no_object_and_no_temp_file(store, root):
    with pytest.raises(ConnectionResetError):
        store.put_stream("datasets/d1/upload.zip", FailingStream(good=3 * 1024 * 1024))
    assert store.exists("datasets/d1/upload.zip") is False
    assert list(store.list()) == []
    assert [p.name for p in root.rglob("*") if p.is_file()] == []


def test_a_failed_overwrite_keeps_the_old_object_intact(store, root):
    old = store.put_bytes("records/r1/manifest.json", b'{"shards": 4}')
    with pytest.raises(ConnectionResetError):
        store.put_stream("records/r1/manifest.json", FailingStream(good=1000))
    assert store.stat("records/r1/manifest.json") == old
    assert store.get_bytes("records/r1/manifest.json") == b'{"shards": 4}'
    assert sorted(p.name for p in (root / "records" / "r1").iterdir()) == ["manifest.json"]


def test_bookkeeping_files_never_show_up_in_listings(store, root):
    store.put_bytes("a/b", b"1")
    store.put_bytes("c", b"2")
    assert (root / ".classforge").is_dir()  # the sha256 sidecars
    assert [info.key for info in store.list()] == ["a/b", "c"]
    assert [info.key for info in store.list(".")] == []


def test_a_file_put_there_by_hand_is_an_object_with_unknown_sha256(store, root):
    (root / "dropped").mkdir(parents=True)
    (root / "dropped" / "img.jpg").write_bytes(b"jpeg")
    assert store.stat("dropped/img.jpg") == ObjectInfo("dropped/img.jpg", 4, None)
    assert list(store.list("dropped/")) == [ObjectInfo("dropped/img.jpg", 4, None)]
    assert store.get_bytes("dropped/img.jpg") == b"jpeg"


def test_a_file_changed_behind_the_stores_back_no_longer_claims_the_old_sha256(store, root):
    store.put_bytes("k", b"version one")
    (root / "k").write_bytes(b"edited by hand, longer")
    assert store.stat("k") == ObjectInfo("k", 22, None)
    assert store.get_bytes("k") == b"edited by hand, longer"


def test_silent_corruption_is_detected_on_whole_object_reads(store, root, tmp_path):
    store.put_bytes("models/m.bin", b"\x00" * 1000)
    path = root / "models" / "m.bin"
    st = path.stat()
    with path.open("r+b") as f:  # flip a byte in place and keep the timestamps, as bit rot would
        f.seek(500)
        f.write(b"\x01")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    with pytest.raises(ObjectCorrupted) as caught:
        store.get_bytes("models/m.bin")
    assert "models/m.bin" in str(caught.value)
    assert sha256(b"\x00" * 1000) in str(caught.value)
    target = tmp_path / "download.bin"
    target.write_bytes(b"previous download")
    with pytest.raises(ObjectCorrupted):
        store.get_file("models/m.bin", target)
    assert target.read_bytes() == b"previous download"
    assert sorted(os.listdir(tmp_path)) == ["download.bin", "store"]


def test_a_key_cannot_be_both_an_object_and_a_prefix(store):
    store.put_bytes("a/b", b"1")
    with pytest.raises(InvalidArgument, match="clashes"):
        store.put_bytes("a", b"2")
    with pytest.raises(InvalidArgument, match="clashes"):
        store.put_bytes("a/b/c", b"3")
    assert [info.key for info in store.list()] == ["a/b"]


def test_deletes_leave_no_empty_directories_behind(store, root):
    store.put_bytes("jobs/j1/a/b/c", b"1")
    store.put_bytes("jobs/j1/x", b"2")
    store.delete("jobs/j1/a/b/c")
    assert sorted(p.name for p in (root / "jobs" / "j1").iterdir()) == ["x"]
    store.delete_prefix("jobs/")
    assert [p.name for p in root.iterdir()] == [".classforge"]
    assert list((root / ".classforge").rglob("*")) == [root / ".classforge" / "sha256"]
    store.put_bytes("jobs", b"now a plain object")  # no directory left in the way
    assert store.get_bytes("jobs") == b"now a plain object"


def test_ping_creates_the_root_and_reports_an_unusable_one(tmp_path):
    store = LocalObjectStore(tmp_path / "new" / "root")
    store.ping()
    assert (tmp_path / "new" / "root").is_dir()

    (tmp_path / "a-file").write_bytes(b"")
    with pytest.raises(Unavailable, match="a-file"):
        LocalObjectStore(tmp_path / "a-file").ping()


def test_a_relative_root_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = LocalObjectStore("rel/store")
    assert store.root == (tmp_path / "rel" / "store").resolve()
    assert store.uri("k") == (tmp_path / "rel" / "store" / "k").resolve().as_uri()


@pytest.mark.parametrize("url", ["file:///{root}", "{root}", "file://localhost/{root}"])
def test_open_object_store_makes_a_local_store_from_a_file_url_or_a_path(tmp_path, url):
    root = str(tmp_path / "s").lstrip("/")
    store = open_object_store(url.format(root=root if url.startswith("file") else "/" + root))
    assert isinstance(store, LocalObjectStore)
    assert store.root == (tmp_path / "s").resolve()


def test_open_object_store_makes_a_minio_store_from_an_s3_url():
    store = open_object_store("s3://minio.internal:9000/artefacts", access_key="ak", secret_key="sk")
    assert isinstance(store, MinioObjectStore)
    assert (store.endpoint, store.bucket) == ("minio.internal:9000", "artefacts")
    assert store.uri("datasets/d1/list.txt") == "s3://artefacts/datasets/d1/list.txt"


@pytest.mark.parametrize("url", ["", "http://host/bucket", "s3://host:9000", "s3://host:9000/",
                                 "s3://host:9000/bucket/sub", "s3:///bucket", "file://relative/dir",
                                 "s3://host:9000/Bad_Bucket!"])
def test_open_object_store_rejects_other_urls(url):
    with pytest.raises(InvalidArgument) as caught:
        open_object_store(url)
    assert caught.value.field in ("url", "bucket")


def test_a_local_store_offers_its_files_for_reading_in_place(store, root):
    store.put_bytes("records/b1/train-0.tfrecord", b"x")
    assert store.local_path() == root.resolve()
    assert store.local_path("records/b1") == store.local_path("records/b1/") == root.resolve() / "records/b1"
    assert store.local_path("records/b1/train-0.tfrecord").read_bytes() == b"x"
    with pytest.raises(InvalidArgument):
        store.local_path("records/../../outside")


def test_a_network_store_has_no_local_path_and_writes_with_more_threads():
    minio = MinioObjectStore("minio.internal:9000", "ak", "sk", "artefacts")  # no network until used
    assert minio.local_path("records/b1") is None
    assert minio.useful_write_threads > LocalObjectStore.useful_write_threads >= 1


def test_iter_lines_streams_an_object_line_by_line_and_checks_it_at_the_end(tmp_path):
    store = LocalObjectStore(tmp_path / "store")
    text = b"first\n\nthird line\r\n" + b"x" * 50 + b"\nno newline at the end"
    store.put_bytes("lists/a.list", text)
    lines = list(store.iter_lines("lists/a.list", chunk_bytes=7))  # lines cut across chunks
    assert lines == text.splitlines(keepends=True) and b"".join(lines) == text
    path = tmp_path / "store" / "lists" / "a.list"
    st = path.stat()
    with path.open("r+b") as f:  # bit rot: same size and times, other bytes
        f.seek(3)
        f.write(b"X")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ObjectCorrupted):
        list(store.iter_lines("lists/a.list"))
