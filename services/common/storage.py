"""Object storage for artefacts (datasets, records, models, reports): one interface, two adapters.

Services code against `ObjectStore`; `open_object_store(url)` picks the adapter from a URL:
`LocalObjectStore` (a directory, for embedded single-machine runs) or `MinioObjectStore` (MinIO or
any S3-compatible store). Both pass the one contract suite in tests/contracts/object_store_contract.py,
so code tested against one behaves the same on the other.

Keys are '/'-separated relative names ("datasets/<id>/lists/train.txt") and the same keys are valid
on both adapters: no empty, '.' or '..' segments, no leading '/', no backslash or NUL, at most 1024
UTF-8 bytes, and no segment starting with ".classforge" (the local store's bookkeeping). Prefixes in
list() and delete_prefix() are raw string prefixes as in S3: "a/b" matches "a/b/x" and also "a/bc";
end a prefix with '/' to mean one "directory".

Every object carries the SHA-256 of its content, recorded by put_* and checked by the whole-object
reads get_bytes() and get_file(), so a damaged object is reported instead of consumed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import REPLACE, CopySource
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error
from minio.helpers import check_bucket_name

from services.common.errors import ClassforgeError, DataLoss, InvalidArgument, NotFound, Unavailable

PART_SIZE = 16 * 1024 * 1024  # multipart part size: bounds the memory one upload holds per part
_CHUNK = 1024 * 1024
_RESERVED = ".classforge"
_MAX_KEY_BYTES = 1024  # the S3 limit
_DEFAULT_CONTENT_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str | None  # hex digest recorded when the object was written; None if unknown


class ObjectNotFound(NotFound):
    """No object has that key."""

    def __init__(self, key: str):
        super().__init__("object", key)


class ObjectCorrupted(DataLoss):
    """The content read does not match the SHA-256 recorded when the object was written."""

    def __init__(self, key: str, recorded: str, actual: str):
        super().__init__(f"object {key!r} is corrupted: its content has sha256 {actual} but {recorded} was "
                         f"recorded when it was written; write it again")
        self.key = key


def check_key(key: str, field: str = "key") -> str:
    """Returns `key` if it is a valid object key, else raises InvalidArgument(field, why)."""
    if not isinstance(key, str) or not key:
        raise InvalidArgument(field, "an object key must be a non-empty string")
    _check_name(key, field, key.split("/"))
    return key


def _check_prefix(prefix: str) -> None:
    """A prefix follows the key rules, except that its last segment may be partial or empty."""
    if not isinstance(prefix, str):
        raise InvalidArgument("prefix", "must be a string")
    if prefix:
        _check_name(prefix, "prefix", prefix.split("/")[:-1])


def _check_name(name: str, field: str, whole_segments: list[str]) -> None:
    if name.startswith("/"):
        raise InvalidArgument(field, f"{name!r} must be relative (no leading '/')")
    if "\\" in name or "\0" in name:
        raise InvalidArgument(field, f"{name!r} must not contain a backslash or NUL")
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        raise InvalidArgument(field, f"{name!r} is not valid Unicode text") from None
    if size > _MAX_KEY_BYTES:
        raise InvalidArgument(field, f"is {size} bytes long; at most {_MAX_KEY_BYTES} are allowed")
    for segment in whole_segments:
        if segment in ("", ".", ".."):
            raise InvalidArgument(field, f"{name!r} has an empty, '.' or '..' path segment")
        if segment.startswith(_RESERVED):
            raise InvalidArgument(field, f"{name!r}: segments starting with {_RESERVED!r} are reserved")


class ObjectStore(ABC):
    """Where artefacts live. Every adapter raises ObjectNotFound for a missing key, InvalidArgument
    for a bad key, prefix or URI, and Unavailable when the backing store cannot be reached."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str = _DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        """Writes (or replaces) the object; readers see the old or the new object, never a mix."""

    @abstractmethod
    def put_file(self, key: str, path: str | os.PathLike,
                 content_type: str = _DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        """Uploads a file, streaming it: large files never sit in memory whole."""

    @abstractmethod
    def put_stream(self, key: str, stream: BinaryIO, content_type: str = _DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        """Uploads a stream of unknown length, read to its end in parts."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Removes the object; a missing key is not an error, so retried deletes are harmless."""

    @abstractmethod
    def ping(self) -> None:
        """Raises Unavailable, saying why, unless the store can be read and written (health readiness)."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """Where the object lives, for logs and for tools that take a URI or path."""

    @abstractmethod
    def key_from_uri(self, uri: str) -> str:
        """The inverse of uri(); InvalidArgument("uri", …) for a URI that is not in this store."""

    @abstractmethod
    def _open(self, key: str) -> AbstractContextManager[tuple[BinaryIO, str | None]]:
        """Opens the object for reading: yields the stream and the recorded sha256 (None if unknown)."""

    @abstractmethod
    def _list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def get_bytes(self, key: str) -> bytes:
        with self._open(key) as (stream, recorded):
            data = stream.read()
        _verify(key, recorded, hashlib.sha256(data).hexdigest())
        return data

    def get_file(self, key: str, path: str | os.PathLike) -> ObjectInfo:
        """Streams the object to `path` (parents are created). The download goes to a temp file that is
        renamed to `path` only once complete and verified, so a partial download never looks complete."""
        with self._open(key) as (stream, recorded), _atomic_file(Path(path)) as out:
            size, sha = _copy(stream, out)
            _verify(key, recorded, sha)
        return ObjectInfo(key, size, sha)

    @contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        """Streaming read; unlike get_*, not checked against the recorded sha256 (readers may stop early)."""
        with self._open(key) as (stream, _):
            yield stream

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix` (a raw string prefix), at any depth, sorted by key."""
        _check_prefix(prefix)  # here, not in the generator, so a bad prefix fails at the call
        return self._list(prefix)

    def delete_prefix(self, prefix: str) -> int:
        """Deletes every object whose key starts with `prefix`; returns how many. An empty prefix is
        refused rather than taken to mean the whole store."""
        if not prefix:
            raise InvalidArgument("prefix", "must not be empty: refusing to delete the whole store")
        keys = [info.key for info in self.list(prefix)]
        self._delete_keys(keys)
        return len(keys)

    def _delete_keys(self, keys: list[str]) -> None:
        for key in keys:
            self.delete(key)


class LocalObjectStore(ObjectStore):
    """Objects as plain files under a root directory, for embedded single-machine runs and tests.

    Key k is the file root/k, so its file:// URI can be handed to tools that read paths. Writes go to a
    temp file in the target's directory, renamed into place when complete: readers see the old or the
    new object, never a partial one (atomic against crashes of the process; durability on power loss is
    left to the filesystem). Each object's sha256 is kept in a sidecar, root/.classforge/sha256/<key>,
    together with the identity (inode, size, mtime) of the file it describes; a sidecar that does not
    match its file (left by a crash, a concurrent writer or a file put there by hand) is ignored and
    sha256 is None. Unlike S3, one key cannot be both an object and a prefix of others ("a", "a/b").
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self._sidecars = self.root / _RESERVED / "sha256"

    def put_bytes(self, key: str, data: bytes, content_type: str = _DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        return self.put_stream(key, io.BytesIO(data), content_type)

    def put_file(self, key: str, path: str | os.PathLike,
                 content_type: str = _DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        with open(path, "rb") as source:
            return self.put_stream(key, source, content_type)

    def put_stream(self, key: str, stream: BinaryIO, content_type: str = _DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        """Files have no content type: it is accepted for compatibility and not kept."""
        path = self._path(key)
        try:
            with _atomic_file(path) as out:
                size, sha = _copy(stream, out)
                out.flush()
                # Recorded before the rename so the sha256 is known as soon as the object is visible.
                self._write_sidecar(key, sha, os.fstat(out.fileno()))
        except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
            raise InvalidArgument("key", f"{key!r} clashes with an existing object or prefix: a local store "
                                         f"cannot hold both 'a' and 'a/b'") from exc
        return ObjectInfo(key, size, sha)

    def stat(self, key: str) -> ObjectInfo:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        if not S_ISREG(st.st_mode):
            raise ObjectNotFound(key)
        return ObjectInfo(key, st.st_size, self._recorded_sha(key, st))

    def delete(self, key: str) -> None:
        for path in (self._path(key), self._sidecars / key):
            with suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
                path.unlink()
                self._prune(path.parent)

    def ping(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Unavailable(f"local object store {self.root} cannot be created: {exc.strerror}") from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise Unavailable(f"local object store {self.root} is not writable")

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def key_from_uri(self, uri: str) -> str:
        parts = urlsplit(uri)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise InvalidArgument("uri", f"{uri!r} is not a file:// URI of this store ({self.root.as_uri()})")
        try:
            key = Path(unquote(parts.path)).relative_to(self.root).as_posix()
        except ValueError:
            raise InvalidArgument("uri", f"{uri!r} is not inside this store ({self.root.as_uri()})") from None
        return check_key(key, "uri")

    @contextmanager
    def _open(self, key: str) -> Iterator[tuple[BinaryIO, str | None]]:
        try:
            stream = self._path(key).open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(key) from None
        with stream:
            yield stream, self._recorded_sha(key, os.fstat(stream.fileno()))

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        start = self.root / prefix.rpartition("/")[0]
        if not start.resolve().is_relative_to(self.root):
            return
        found = {key: st for key, st in self._walk(start) if key.startswith(prefix)}
        for key in sorted(found):
            yield ObjectInfo(key, found[key].st_size, self._recorded_sha(key, found[key]))

    def _walk(self, directory: Path) -> Iterator[tuple[str, os.stat_result]]:
        """Regular files below `directory`, skipping bookkeeping and symbolic links (which may lead out)."""
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.name.startswith(_RESERVED) or entry.is_symlink():
                continue
            if entry.is_dir():
                yield from self._walk(Path(entry.path))
            elif entry.is_file():
                yield Path(entry.path).relative_to(self.root).as_posix(), entry.stat()

    def _path(self, key: str) -> Path:
        """The file of `key`; refused if a symbolic link inside root would lead it outside."""
        path = self.root / check_key(key)
        if not path.resolve().is_relative_to(self.root):
            raise InvalidArgument("key", f"{key!r} leads outside the store root {self.root}")
        return path

    def _write_sidecar(self, key: str, sha: str, st: os.stat_result) -> None:
        with _atomic_file(self._sidecars / key) as out:
            out.write(json.dumps({"sha256": sha, **_identity(st)}).encode())

    def _recorded_sha(self, key: str, st: os.stat_result) -> str | None:
        try:
            sidecar = json.loads((self._sidecars / key).read_bytes())
        except (OSError, ValueError):
            return None
        matches = {name: sidecar.get(name) for name in ("ino", "size", "mtime_ns")} == _identity(st)
        return sidecar.get("sha256") if matches else None

    def _prune(self, directory: Path) -> None:
        """Removes directories a delete left empty, as S3 has no empty "directories"."""
        while directory not in (self.root, self._sidecars) and directory.is_relative_to(self.root):
            try:
                directory.rmdir()
            except OSError:  # not empty
                return
            directory = directory.parent


class MinioObjectStore(ObjectStore):
    """Objects in one bucket of MinIO or any S3-compatible store.

    The bucket is created on first use. Each object's sha256 is user metadata (x-amz-meta-sha256), so
    other S3 tools see it too. Connection failures become Unavailable naming the endpoint, after a few
    short retries: an unreachable store is reported in seconds, not minutes.
    """

    def __init__(self, endpoint: str, access_key: str, secret_key: str, bucket: str, secure: bool = False,
                 region: str | None = None):
        try:
            check_bucket_name(bucket)
        except ValueError as exc:
            raise InvalidArgument("bucket", f"{bucket!r}: {exc}") from None
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=3, read=60), maxsize=10,
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
            cert_reqs="CERT_REQUIRED", ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where())
        try:
            self._client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure,
                                 region=region, http_client=http)
        except ValueError as exc:
            raise InvalidArgument("endpoint", f"{endpoint!r}: {exc}") from None
        self.endpoint = endpoint
        self.bucket = bucket
        self._bucket_ready = False

    def put_bytes(self, key: str, data: bytes, content_type: str = _DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        sha = hashlib.sha256(data).hexdigest()
        self._put(check_key(key), io.BytesIO(data), len(data), content_type, sha)
        return ObjectInfo(key, len(data), sha)

    def put_file(self, key: str, path: str | os.PathLike,
                 content_type: str = _DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        """Hashes the file first, so that the sha256 travels with the upload, then uploads it in parts."""
        check_key(key)
        with open(path, "rb") as source:
            size, sha = _copy(source, None)
            source.seek(0)
            self._put(key, source, size, content_type, sha)
        return ObjectInfo(key, size, sha)

    def put_stream(self, key: str, stream: BinaryIO, content_type: str = _DEFAULT_CONTENT_TYPE) -> ObjectInfo:
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


def open_object_store(url: str, *, access_key: str = "", secret_key: str = "",
                      secure: bool = False) -> ObjectStore:
    """The store a URL names: `s3://HOST:PORT/BUCKET` (MinIO or S3), `file:///abs/dir` or a plain
    directory path (local)."""
    if url and "://" not in url:
        return LocalObjectStore(url)
    parts = urlsplit(url)
    if parts.scheme == "file" and parts.netloc in ("", "localhost") and parts.path:
        return LocalObjectStore(unquote(parts.path))
    bucket = parts.path.strip("/")
    if parts.scheme == "s3" and parts.netloc and bucket and "/" not in bucket:
        return MinioObjectStore(parts.netloc, access_key, secret_key, bucket, secure=secure)
    raise InvalidArgument("url", f"{url!r}: expected s3://HOST:PORT/BUCKET, file:///absolute/dir or a "
                                 f"directory path")


@contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A temp file beside `path` that is renamed to `path` only if the block completes, so an error or
    crash mid-write never leaves a partial file under the final name. Creates missing parents."""
    for attempt in range(3):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{_RESERVED}-tmp-")
            break
        except FileNotFoundError:  # a concurrent delete pruned the new directory: make it again
            if attempt == 2:
                raise
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide objects from other users (a model server)
        with os.fdopen(fd, "wb") as out:
            yield out
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _copy(source: BinaryIO, target: BinaryIO | None) -> tuple[int, str]:
    """Copies `source` to its end into `target` (or nowhere), chunk by chunk; returns (size, sha256)."""
    sha, size = hashlib.sha256(), 0
    while chunk := source.read(_CHUNK):
        sha.update(chunk)
        size += len(chunk)
        if target is not None:
            target.write(chunk)
    return size, sha.hexdigest()


def _read_up_to(stream: BinaryIO, limit: int) -> bytes:
    """Reads `limit` bytes, or fewer at the end of the stream (one read() may return less than asked)."""
    chunks: list[bytes] = []
    remaining = limit
    while remaining and (chunk := stream.read(remaining)):
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _verify(key: str, recorded: str | None, actual: str) -> None:
    if recorded is not None and recorded != actual:
        raise ObjectCorrupted(key, recorded, actual)


def _identity(st: os.stat_result) -> dict[str, int]:
    return {"ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


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

