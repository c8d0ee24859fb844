"""MinioObjectStore against the real MinIO that deploy/local starts: the shared ObjectStore contract,
plus what only a networked store can get wrong (unreachable endpoint, credentials, bucket creation,
multipart uploads, metadata other S3 tools see). Fails, never skips, when MinIO is not reachable."""

from __future__ import annotations

import io
import os
import threading
import time
import urllib.request
import uuid

import pytest
from minio import Minio
from minio.deleteobjects import DeleteObject

from services.common.errors import Unavailable
from services.common.storage import PART_SIZE, ObjectCorrupted, ObjectInfo
from services.common.storage.minio import MinioObjectStore
from tests.conftest import local_infra_credential
from tests.contracts.object_store_contract import ObjectStoreContract, TrickleStream, sha256

pytestmark = pytest.mark.integration

ENDPOINT = os.environ.get("CLASSFORGE_S3_ENDPOINT", "127.0.0.1:19000")
ACCESS_KEY = local_infra_credential("CLASSFORGE_S3_ACCESS_KEY")
SECRET_KEY = local_infra_credential("CLASSFORGE_S3_SECRET_KEY")
SESSION = uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def minio_client() -> Minio:
    """A plain client to set up and clean up with, independent of the code under test."""
    problem = None
    try:
        with urllib.request.urlopen(f"http://{ENDPOINT}/minio/health/ready", timeout=5):
            pass
    except OSError as exc:
        problem = exc
    if problem is not None:
        pytest.fail(f"MinIO at {ENDPOINT} is not reachable ({problem}): run `make infra-up` (or `make test`)",
                    pytrace=False)
    if not (ACCESS_KEY and SECRET_KEY):
        pytest.fail("no MinIO credentials: set CLASSFORGE_S3_ACCESS_KEY/SECRET_KEY or run `make infra-up`, which "
                    "generates .infra/credentials.env", pytrace=False)
    return Minio(ENDPOINT, access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False)


def remove_bucket(client: Minio, bucket: str, keep_bucket: bool = False) -> None:
    if not client.bucket_exists(bucket):
        return
    names = [DeleteObject(obj.object_name) for obj in client.list_objects(bucket, recursive=True)]
    assert list(client.remove_objects(bucket, names)) == []
    if not keep_bucket:
        client.remove_bucket(bucket)


@pytest.fixture(scope="session")
def bucket(minio_client):
    """One bucket for the session's contract tests, emptied after each test and removed at the end."""
    name = f"test-{SESSION}"
    yield name
    remove_bucket(minio_client, name)


@pytest.fixture
def fresh_bucket(minio_client):
    """A bucket name no one has used yet; removed after the test if it was created."""
    name = f"test-{SESSION}-{uuid.uuid4().hex[:8]}"
    yield name
    remove_bucket(minio_client, name)


def make_store(bucket: str, **overrides) -> MinioObjectStore:
    settings = {"endpoint": ENDPOINT, "access_key": ACCESS_KEY, "secret_key": SECRET_KEY, "bucket": bucket}
    return MinioObjectStore(**{**settings, **overrides})


class TestMinioObjectStore(ObjectStoreContract):
    @pytest.fixture
    def store(self, minio_client, bucket):
        yield make_store(bucket)
        remove_bucket(minio_client, bucket, keep_bucket=True)


def test_an_unreachable_endpoint_is_unavailable_within_seconds(fresh_bucket):
    store = make_store(fresh_bucket, endpoint="127.0.0.1:1")
    for call in (store.ping, lambda: store.put_bytes("k", b"1"), lambda: store.get_bytes("k"),
                 lambda: store.stat("k"), lambda: list(store.list())):
        started = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            call()
        assert time.monotonic() - started < 5
        assert "127.0.0.1:1" in str(caught.value)
        assert "cannot be reached" in str(caught.value)


def test_wrong_credentials_make_ping_unavailable_with_the_reason(fresh_bucket):
    store = make_store(fresh_bucket, secret_key="not-the-secret")
    with pytest.raises(Unavailable) as caught:
        store.ping()
    assert ENDPOINT in str(caught.value)
    assert "SignatureDoesNotMatch" in str(caught.value) or "InvalidAccessKeyId" in str(caught.value)


def test_ping_creates_the_bucket_and_concurrent_creation_is_safe(minio_client, fresh_bucket):
    assert not minio_client.bucket_exists(fresh_bucket)
    errors: list[BaseException] = []

    def ping():
        try:
            make_store(fresh_bucket).ping()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=ping) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert minio_client.bucket_exists(fresh_bucket)


def test_losing_the_race_to_create_the_bucket_is_not_an_error(minio_client, fresh_bucket):
    minio_client.make_bucket(fresh_bucket)
    store = make_store(fresh_bucket)
    store._client.bucket_exists = lambda name: False  # as if another process created it after our check
    store.ping()
    store.put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v"


def test_the_first_write_creates_the_bucket(minio_client, fresh_bucket):
    store = make_store(fresh_bucket)
    store.put_bytes("k", b"v")
    assert minio_client.bucket_exists(fresh_bucket)
    assert store.get_bytes("k") == b"v"


def test_sha256_and_content_type_are_object_metadata_other_tools_see(minio_client, fresh_bucket):
    store = make_store(fresh_bucket)
    store.put_bytes("r/report.json", b"{}", content_type="application/json")
    big = os.urandom(PART_SIZE + 100)
    store.put_stream("r/big.bin", TrickleStream(big), content_type="application/x-big")
    for key, data, content_type in [("r/report.json", b"{}", "application/json"),
                                    ("r/big.bin", big, "application/x-big")]:
        raw = minio_client.stat_object(fresh_bucket, key)
        assert raw.metadata["x-amz-meta-sha256"] == sha256(data)
        assert raw.content_type == content_type


def test_large_files_are_uploaded_in_parts_of_part_size(minio_client, fresh_bucket, tmp_path):
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(2 * PART_SIZE + 1))
    make_store(fresh_bucket).put_file("big.bin", source)
    etag = minio_client.stat_object(fresh_bucket, "big.bin").etag
    assert etag.endswith("-3")  # a multipart upload's ETag ends in -<number of parts>


def test_an_object_whose_recorded_sha256_does_not_match_is_reported_corrupted(minio_client, fresh_bucket,
                                                                              tmp_path):
    store = make_store(fresh_bucket)
    store.ping()
    minio_client.put_object(fresh_bucket, "bad", io.BytesIO(b"content"), 7, metadata={"sha256": "0" * 64})
    assert store.stat("bad") == ObjectInfo("bad", 7, "0" * 64)
    with pytest.raises(ObjectCorrupted, match="'bad'"):
        store.get_bytes("bad")
    with pytest.raises(ObjectCorrupted):
        store.get_file("bad", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    with store.open("bad") as stream:  # a streaming read is not checked
        assert stream.read() == b"content"


def test_an_object_written_by_another_tool_has_unknown_sha256(minio_client, fresh_bucket):
    store = make_store(fresh_bucket)
    store.ping()
    minio_client.put_object(fresh_bucket, "foreign", io.BytesIO(b"abc"), 3)
    assert store.stat("foreign") == ObjectInfo("foreign", 3, None)
    assert list(store.list()) == [ObjectInfo("foreign", 3, None)]
    assert store.get_bytes("foreign") == b"abc"
