"""Object storage for artefacts (datasets, records, models, reports): the interface every service
codes against. The adapters are `services.common.storage.local.LocalObjectStore` (a directory, for
embedded single-machine runs) and `services.common.storage.minio.MinioObjectStore` (MinIO or any
S3-compatible store); `services.common.storage.open_object_store(url)` picks one from a URL. Both pass
the one contract suite in tests/contracts/object_store_contract.py, so code tested against one behaves
the same on the other.

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
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from services.common.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound

#: Multipart part size of network stores: bounds the memory one upload holds per part (the contract
#: writes streams longer than one part, so it is known here).
PART_SIZE = 16 * 1024 * 1024
_CHUNK = 1024 * 1024
RESERVED_PREFIX = ".classforge"  # key segments starting with it are the local store's bookkeeping
_MAX_KEY_BYTES = 1024  # the S3 limit
DEFAULT_CONTENT_TYPE = "application/octet-stream"


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


class VersionMismatch(FailedPrecondition):
    """A conditional write found the object other than expected: present when it had to be absent,
    or replaced (or removed) since the version the writer read."""

    def __init__(self, key: str, expected: str | None, found: str | None):
        want = "no object" if expected is None else f"version {expected}"
        have = "none" if found is None else f"version {found}"
        super().__init__(f"object {key!r} changed: the write expected {want} but found {have}")
        self.key, self.expected, self.found = key, expected, found


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
        if segment.startswith(RESERVED_PREFIX):
            raise InvalidArgument(field, f"{name!r}: segments starting with {RESERVED_PREFIX!r} are reserved")


class ObjectStore(ABC):
    """Where artefacts live. Every adapter raises ObjectNotFound for a missing key, InvalidArgument
    for a bad key, prefix or URI, and Unavailable when the backing store cannot be reached."""

    #: How many threads writing objects at once pay off. A network store answers each call after a
    #: round trip, so several calls in flight hide the latency; a store on the local disk is bound by
    #: the kernel's own work per file, where more threads than cores only add contention.
    useful_write_threads: int = 8

    def local_path(self, key: str = "") -> Path | None:
        """The file (or, for a "directory" prefix, the directory) holding `key` when the store keeps
        objects as plain files that can be read in place, skipping a download; "" is the root. None
        when the store has no such path (a network store)."""
        return None

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        """Writes (or replaces) the object; readers see the old or the new object, never a mix."""

    @abstractmethod
    def put_file(self, key: str, path: str | os.PathLike,
                 content_type: str = DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        """Uploads a file, streaming it: large files never sit in memory whole."""

    @abstractmethod
    def put_stream(self, key: str, stream: BinaryIO, content_type: str = DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        """Uploads a stream of unknown length, read to its end in parts."""

    @abstractmethod
    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The object's content and its version: an opaque tag that changes with every write of the
        key (the ETag on S3), for put_bytes_if. Small objects only (not checked against the sha256)."""

    @abstractmethod
    def put_bytes_if(self, key: str, data: bytes, version: str | None,
                     content_type: str = DEFAULT_CONTENT_TYPE) -> str:
        """Compare-and-set: writes the object only if it is absent (`version` None) or still at
        `version`, atomically against every other writer of the key, and returns the new version;
        else raises VersionMismatch and writes nothing. Leases and other single-writer records rely on it."""

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
        with self._open(key) as (stream, recorded), atomic_file(Path(path)) as out:
            size, sha = copy_stream(stream, out)
            _verify(key, recorded, sha)
        return ObjectInfo(key, size, sha)

    def iter_lines(self, key: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """The object's lines, each with its b"\\n" (the last maybe without), read in chunks: a large list
        file is never in memory whole. Checked like get_bytes, once its end is read: ObjectCorrupted
        then, after every line was yielded, so a reader must not act on the lines before the end."""
        with self._open(key) as (stream, recorded):
            sha, rest = hashlib.sha256(), b""
            while data := stream.read(chunk_bytes):
                sha.update(data)
                lines = (rest + data).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    yield line + b"\n"
            if rest:
                yield rest
        _verify(key, recorded, sha.hexdigest())

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


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A temp file beside `path` that is renamed to `path` only if the block completes, so an error or
    crash mid-write never leaves a partial file under the final name. Creates missing parents. (Plain
    strings inside: see LocalObjectStore._file on Paths per object.)"""
    parent = os.path.dirname(os.fspath(path))
    for attempt in range(3):
        os.makedirs(parent, exist_ok=True)
        try:
            fd, tmp = tempfile.mkstemp(dir=parent, prefix=f"{RESERVED_PREFIX}-tmp-")
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


def copy_stream(source: BinaryIO, target: BinaryIO | None) -> tuple[int, str]:
    """Copies `source` to its end into `target` (or nowhere), chunk by chunk; returns (size, sha256)."""
    sha, size = hashlib.sha256(), 0
    while chunk := source.read(_CHUNK):
        sha.update(chunk)
        size += len(chunk)
        if target is not None:
            target.write(chunk)
    return size, sha.hexdigest()


def _verify(key: str, recorded: str | None, actual: str) -> None:
    if recorded is not None and recorded != actual:
        raise ObjectCorrupted(key, recorded, actual)


