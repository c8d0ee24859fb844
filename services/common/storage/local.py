"""The object store as a directory of plain files, for embedded single-machine runs and tests."""

from __future__ import annotations

import fcntl
import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from services.common.errors import InvalidArgument
from services.common.storage.interface import (
    DEFAULT_CONTENT_TYPE,
    RESERVED_PREFIX,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    VersionMismatch,
    atomic_file,
    check_key,
    copy_stream,
)
from services.common.writable_dir import require_writable_dir


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
        self._sidecars = self.root / RESERVED_PREFIX / "sha256"
        self._root_str = str(self.root)
        self._sidecars_str = str(self._sidecars)

    useful_write_threads = 2  # see ObjectStore: the local disk gains nothing from more

    def local_path(self, key: str = "") -> Path:
        """Keys are files under root: tools may read them in place."""
        return self._path(key.rstrip("/")) if key.strip("/") else self.root

    def put_bytes(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        return self.put_stream(key, io.BytesIO(data), content_type)

    def put_file(self, key: str, path: str | os.PathLike,
                 content_type: str = DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        with open(path, "rb") as source:
            return self.put_stream(key, source, content_type)

    def put_stream(self, key: str, stream: BinaryIO, content_type: str = DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        """Files have no content type: it is accepted for compatibility and not kept."""
        path = self._file(key)
        try:
            with atomic_file(path) as out:
                size, sha = copy_stream(stream, out)
                out.flush()
                # Recorded before the rename so the sha256 is known as soon as the object is visible.
                self._write_sidecar(key, sha, os.fstat(out.fileno()))
        except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
            raise InvalidArgument("key", f"{key!r} clashes with an existing object or prefix: a local store "
                                         f"cannot hold both 'a' and 'a/b'") from exc
        return ObjectInfo(key, size, sha)

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        try:
            with self._path(key).open("rb") as stream:
                return stream.read(), _version(os.fstat(stream.fileno()))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(key) from None

    def put_bytes_if(self, key: str, data: bytes, version: str | None,
                     content_type: str = DEFAULT_CONTENT_TYPE) -> str:
        """The compare and the write happen under an exclusive lock file of the key (flock: every
        process on this machine that writes conditionally takes it). Each write renames a new file into
        place, so the version (inode, mtime, size) of the replaced object never comes back."""
        path = self._path(key)
        lock = self.root / RESERVED_PREFIX / "locks" / key
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "ab") as held:
            fcntl.flock(held, fcntl.LOCK_EX)  # released when the file closes
            try:
                found = _version(path.stat())
            except (FileNotFoundError, NotADirectoryError):
                found = None
            if found != version:
                raise VersionMismatch(key, version, found)
            self.put_bytes(key, data, content_type)
            return _version(path.stat())

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
        require_writable_dir(self.root, "local object store")

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
            if entry.name.startswith(RESERVED_PREFIX) or entry.is_symlink():
                continue
            if entry.is_dir():
                yield from self._walk(Path(entry.path))
            elif entry.is_file():
                yield Path(entry.path).relative_to(self.root).as_posix(), entry.stat()

    def _file(self, key: str) -> str:
        """_path(key) as a str, for writes. A Path interns each of its parts in Python 3.11 (pathlib's
        parse_parts calls sys.intern), and the interpreter's table of interned strings never shrinks:
        writing a dataset of 350,000 content-named images through Paths kept ~200 bytes per image, and
        twice that while the table grew."""
        path = os.path.join(self._root_str, check_key(key))
        real = os.path.realpath(path)
        if real != self._root_str and not real.startswith(self._root_str.rstrip(os.sep) + os.sep):
            raise InvalidArgument("key", f"{key!r} leads outside the store root {self.root}")
        return path

    def _path(self, key: str) -> Path:
        """The file of `key`; refused if a symbolic link inside root would lead it outside."""
        path = self.root / check_key(key)
        if not path.resolve().is_relative_to(self.root):
            raise InvalidArgument("key", f"{key!r} leads outside the store root {self.root}")
        return path

    def _write_sidecar(self, key: str, sha: str, st: os.stat_result) -> None:
        with atomic_file(os.path.join(self._sidecars_str, key)) as out:
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


def _version(st: os.stat_result) -> str:
    return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"


def _identity(st: os.stat_result) -> dict[str, int]:
    return {"ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns}

