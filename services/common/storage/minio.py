"""The object store in one bucket of MinIO or any S3-compatible store. The only module that imports
the MinIO client, so only the composition roots that choose it pay for loading it."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, BinaryIO

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import REPLACE, CopySource
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error
from minio.helpers import check_bucket_name

from services.common.errors import ClassforgeError, InvalidArgument, Unavailable
from services.common.storage.interface import (
    DEFAULT_CONTENT_TYPE,
    PART_SIZE,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    VersionMismatch,
    check_key,
    copy_stream,
)

if TYPE_CHECKING:
    from services.common.settings import ServiceSettings


class MinioObjectStore(ObjectStore):
    """Objects in one bucket of MinIO or any S3-compatible store.

    The bucket is created on first use. Each object's sha256 is user metadata (x-amz-meta-sha256), so
    other S3 tools see it too. Connection failures become Unavailable naming the endpoint, after a few
    short retries: an unreachable store is reported in seconds, not minutes.

    Over TLS (`secure`) the server's certificate is always verified: against `ca_bundle` (a PEM file, for a
    store whose certificate a private CA signed) when given, else SSL_CERT_FILE or certifi's CAs. The
    secret key lives only inside the MinIO client; this object's repr does not show it.
    """

    def __init__(self, endpoint: str, access_key: str, secret_key: str, bucket: str, secure: bool = False,
                 region: str | None = None, ca_bundle: str = ""):
        try:
            check_bucket_name(bucket)
        except ValueError as exc:
            raise InvalidArgument("bucket", f"{bucket!r}: {exc}") from None
        if ca_bundle and not secure:
            raise InvalidArgument("ca_bundle", "a CA bundle is only used over TLS (secure=True)")
        if ca_bundle and not os.path.isfile(ca_bundle):
            raise InvalidArgument("ca_bundle", f"{ca_bundle!r} is not a file")
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=3, read=60), maxsize=10,
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
            cert_reqs="CERT_REQUIRED", ca_certs=ca_bundle or os.environ.get("SSL_CERT_FILE") or certifi.where())
        try:
            self._client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure,
                                 region=region, http_client=http)
        except ValueError as exc:
            raise InvalidArgument("endpoint", f"{endpoint!r}: {exc}") from None
        self.endpoint = endpoint
        self.bucket = bucket
        self._bucket_ready = False

    @classmethod
    def from_settings(cls, settings: ServiceSettings, bucket: str = "") -> MinioObjectStore:
        """The deployment's store from CLASSFORGE_S3_* (`bucket`, or CLASSFORGE_S3_BUCKET). A CA bundle
        without CLASSFORGE_S3_SECURE, or one that cannot be read, raises SettingsError naming the variable."""
        from services.common.settings import SettingsError, check_readable_file

        if settings.s3_ca_bundle:
            if not settings.s3_secure:
                raise SettingsError("CLASSFORGE_S3_CA_BUNDLE is set but CLASSFORGE_S3_SECURE is false: "
                                    "the bundle only verifies a TLS connection")
            check_readable_file("CLASSFORGE_S3_CA_BUNDLE", settings.s3_ca_bundle)
        return cls(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key, bucket or settings.s3_bucket,
                   secure=settings.s3_secure, ca_bundle=settings.s3_ca_bundle)

    def __repr__(self) -> str:
        return f"MinioObjectStore(endpoint={self.endpoint!r}, bucket={self.bucket!r})"

    def put_bytes(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        sha = hashlib.sha256(data).hexdigest()
        self._put(check_key(key), io.BytesIO(data), len(data), content_type, sha)
        return ObjectInfo(key, len(data), sha)

    def put_file(self, key: str, path: str | os.PathLike,
                 content_type: str = DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        """Hashes the file first, so that the sha256 travels with the upload, then uploads it in parts."""
        check_key(key)
        with open(path, "rb") as source:
            size, sha = copy_stream(source, None)
            source.seek(0)
            self._put(key, source, size, content_type, sha)
        return ObjectInfo(key, size, sha)

    def put_stream(self, key: str, stream: BinaryIO, content_type: str = DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        """A stream that ends within one part is a plain put_bytes. A longer one is uploaded in parts
        while being hashed; S3 fixes metadata when an upload starts, so the sha256 is attached afterwards
        by a server-side copy of the object onto itself. That copy is conditional on the uploaded ETag,
        so it never labels a newer object that another writer put meanwhile."""
        check_key(key)
        head = _read_up_to(stream, PART_SIZE + 1)
        if len(head) <= PART_SIZE:
            return self.put_bytes(key, head, content_type)
        self._ensure_bucket()
        hashing = _HashingReader(stream, head)
        with self._calls():
            uploaded = self._client.put_object(self.bucket, key, hashing, -1, content_type=content_type,
                                               part_size=PART_SIZE)
            try:
                self._client.copy_object(
                    self.bucket, key, CopySource(self.bucket, key, match_etag=uploaded.etag),
                    metadata={"Content-Type": content_type, "sha256": hashing.hexdigest()},
                    metadata_directive=REPLACE)
            except S3Error as exc:
                if exc.code != "PreconditionFailed":
                    raise
        return ObjectInfo(key, hashing.size, hashing.hexdigest())

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        check_key(key)
        self._ensure_bucket()
        with self._calls(key):
            response = self._client.get_object(self.bucket, key)
            try:
                return response.read(), response.headers.get("etag", "").strip('"')
            finally:
                response.close()
                response.release_conn()

    def put_bytes_if(self, key: str, data: bytes, version: str | None,
                     content_type: str = DEFAULT_CONTENT_TYPE) -> str:
        """S3's conditional PUT: `If-None-Match: *` (create only) or `If-Match: <ETag>` (replace only
        that version); the server refuses with 412 PreconditionFailed (or 409 when two conditional writes
        race). The locked minio-py (7.2) turns put_object's extra headers into user metadata, so this
        sends the single PUT through its low-level `_put_object`."""
        check_key(key)
        self._ensure_bucket()
        headers = {"Content-Type": content_type, "x-amz-meta-sha256": hashlib.sha256(data).hexdigest()}
        headers.update({"If-None-Match": "*"} if version is None else {"If-Match": f'"{version}"'})
        try:
            with self._calls(key):
                written = self._client._put_object(self.bucket, key, data, headers=headers)  # noqa: SLF001
        except S3Error as exc:
            if exc.code in ("PreconditionFailed", "ConditionalRequestConflict") or exc.code == "NoSuchKey":
                raise VersionMismatch(key, version, None if exc.code == "NoSuchKey" else "another") from None
            raise
        except ObjectNotFound:  # If-Match on a missing object
            raise VersionMismatch(key, version, None) from None
        return written.etag

    def stat(self, key: str) -> ObjectInfo:
        check_key(key)
        self._ensure_bucket()
        with self._calls(key):
            obj = self._client.stat_object(self.bucket, key)
        return ObjectInfo(key, obj.size, obj.metadata.get("x-amz-meta-sha256"))

    def delete(self, key: str) -> None:
        check_key(key)
        self._ensure_bucket()
        with self._calls():
            self._client.remove_object(self.bucket, key)

    def ping(self) -> None:
        """Also creates the bucket if it is missing. Always asks the server: health must be current."""
        self._bucket_ready = False
        try:
            self._ensure_bucket()
        except S3Error as exc:
            raise Unavailable(f"object store at {self.endpoint} refused access to bucket {self.bucket!r}: "
                              f"{exc.code}: {exc.message}") from exc

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{check_key(key)}"

    def key_from_uri(self, uri: str) -> str:
        base = f"s3://{self.bucket}/"
        if not uri.startswith(base):
            raise InvalidArgument("uri", f"{uri!r} is not in this store ({base})")
        return check_key(uri[len(base):], "uri")

    @contextmanager
    def _open(self, key: str) -> Iterator[tuple[BinaryIO, str | None]]:
        check_key(key)
        self._ensure_bucket()
        with self._calls(key):
            response = self._client.get_object(self.bucket, key)
            try:
                yield response, response.headers.get("x-amz-meta-sha256")
            finally:
                response.close()
                response.release_conn()

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        self._ensure_bucket()
        with self._calls():
            # include_user_meta is MinIO's listing extension; other S3 stores list sha256 as None.
            for obj in self._client.list_objects(self.bucket, prefix=prefix or None, recursive=True,
                                                 include_user_meta=True):
                metadata = {name.lower(): value for name, value in (obj.metadata or {}).items()}
                yield ObjectInfo(obj.object_name, obj.size, metadata.get("x-amz-meta-sha256"))

    def _delete_keys(self, keys: list[str]) -> None:
        """One DeleteObjects request per 1000 keys instead of one request per key."""
        with self._calls():
            failures = list(self._client.remove_objects(self.bucket, [DeleteObject(key) for key in keys]))
        if failures:
            first = failures[0]
            raise ClassforgeError(f"could not delete {len(failures)} of {len(keys)} objects from "
                                  f"s3://{self.bucket}/, first {first.name!r}: {first.code} {first.message}")

    def _put(self, key: str, stream: BinaryIO, length: int, content_type: str, sha: str) -> None:
        self._ensure_bucket()
        with self._calls():
            self._client.put_object(self.bucket, key, stream, length, content_type=content_type,
                                    metadata={"sha256": sha}, part_size=PART_SIZE)

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        with self._calls():
            if not self._client.bucket_exists(self.bucket):
                try:
                    self._client.make_bucket(self.bucket)
                except S3Error as exc:
                    if exc.code != "BucketAlreadyOwnedByYou":  # another process created it just now
                        raise
        self._bucket_ready = True

    @contextmanager
    def _calls(self, key: str | None = None) -> Iterator[None]:
        """Translates client errors: NoSuchKey (for `key`) to ObjectNotFound, no answer to Unavailable."""
        try:
            yield
        except S3Error as exc:
            if key is not None and exc.code == "NoSuchKey":
                raise ObjectNotFound(key) from None
            raise
        except urllib3.exceptions.HTTPError as exc:  # refused, timed out, reset (MaxRetryError wraps them)
            reason = getattr(exc, "reason", None) or exc
            raise Unavailable(f"object store at {self.endpoint} cannot be reached: {reason}") from exc
        except MinioException as exc:  # a server error after retries, or an answer that is not S3
            raise Unavailable(f"object store at {self.endpoint} failed: {exc}") from exc


def _read_up_to(stream: BinaryIO, limit: int) -> bytes:
    """Reads `limit` bytes, or fewer at the end of the stream (one read() may return less than asked)."""
    chunks: list[bytes] = []
    remaining = limit
    while remaining and (chunk := stream.read(remaining)):
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class _HashingReader:
    """Reads `head` (bytes already taken from the stream), then the stream, hashing what it hands out."""

    def __init__(self, stream: BinaryIO, head: bytes):
        self._stream, self._head = stream, head
        self._sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._head[:n] if n >= 0 else self._head
        self._head = self._head[len(data):]
        if not data:
            data = self._stream.read(n)
        self._sha.update(data)
        self.size += len(data)
        return data

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

