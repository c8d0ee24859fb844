"""Image validation with Pillow: every file is hashed and fully decoded before it may join a dataset.

Accepted: JPEG, PNG, BMP, GIF (the first frame is decoded) and WebP, in any mode Pillow decodes
(greyscale, palette, CMYK, with or without alpha). The stored bytes are always the original ones;
validation only proves they decode and records format, size, mode and the image's difference hash
(services.common.image_hash, for the evaluator's near-duplicate check): PNG, GIF, BMP and WebP are
hashed from the image just decoded; a JPEG is decoded once more at 1/8 scale (draft), the way the hash
is defined, which costs a small fraction of the full decode.

Rejected, each with a reason `"<code>: <detail>"` (the code is a fixed word, used for counting):
`empty-file`; `not-an-image` (any other content, other formats included: Image.open only tries the
five accepted decoders, so no other Pillow plugin ever parses user data); `too-many-pixels` (judged
on the header, before anything is decoded: the decompression-bomb guard); `too-small` (shorter side
below the minimum); `corrupt` (truncated or damaged: the full decode fails, or the file starts with
an accepted format's signature but its header cannot be read); `too-large` (more bytes than a file
may have); `unreadable` (the file cannot be read at all).

`ValidationPool` / `check_paths` spread the work over processes (decoding is CPU-bound and holds the
GIL), in chunks so that the per-image cost of the pool stays small next to a decode.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import io
import logging
import multiprocessing
import os
import stat
import threading
from array import array
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import NamedTuple

from PIL import Image, UnidentifiedImageError

from services.common import image_hash
from services.common.dataset_options import DEFAULT_MAX_PIXELS
from services.ingest.compact import DIGEST_BYTES, Indexed, Interned
from services.ingest.options import DEFAULT_LIMITS

log = logging.getLogger("classforge.ingest")

# Pillow format name -> file extension used in the dataset layout.
FORMATS: dict[str, str] = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "GIF": "gif", "WEBP": "webp"}
_OPEN_FORMATS = tuple(FORMATS)
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "bmp": "image/bmp", "gif": "image/gif",
                 "webp": "image/webp"}

# Reject codes (the part of a reason before the first ':').
EMPTY = "empty-file"
NOT_AN_IMAGE = "not-an-image"
TOO_MANY_PIXELS = "too-many-pixels"
TOO_SMALL = "too-small"
CORRUPT = "corrupt"
UNREADABLE = "unreadable"
TOO_LARGE = "too-large"

DEFAULT_MAX_FILE_BYTES = DEFAULT_LIMITS.max_file_bytes
# Below this many files a pool costs more than it saves (starting workers takes tens of ms).
POOL_THRESHOLD = 256
MIN_CHUNK = 4


class ImageCheck(NamedTuple):
    """The outcome for one file. `reason` is empty for a valid image."""

    sha256: str
    size: int
    format: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    reason: str = ""
    dhash: int | None = None  # difference hash of a valid image (None if it could not be computed)

    @property
    def ok(self) -> bool:
        return not self.reason

    @property
    def ext(self) -> str:
        return FORMATS[self.format]


class CheckList(Indexed[ImageCheck]):
    """Validation outcomes (ValidationPool.results), compact (services.ingest.compact): the sha256 as 32 raw
    bytes, sizes and hashes as ints in arrays, ~60 bytes a valid image where an ImageCheck with its
    strings and ints takes ~300. A rejected file's outcome (rare, and with a reason text) is kept whole."""

    _SIDE = 0xFF  # format id of an outcome kept whole in _side (a reject)
    _HAS_DHASH = 1

    def __init__(self, checks: Iterable[ImageCheck] = ()):
        self._sha = bytearray()
        self._size = array("q")
        self._width = array("I")
        self._height = array("I")
        self._format = array("B")
        self._mode = array("B")
        self._flags = array("B")
        self._dhash = array("Q")
        self._formats: Interned[str] = Interned()
        self._modes: Interned[str] = Interned()
        self._side: dict[int, ImageCheck] = {}
        self.extend(checks)

    def append(self, check: ImageCheck) -> None:
        compact = (check.ok and len(check.sha256) == 2 * DIGEST_BYTES and len(self._formats) < self._SIDE
                   and len(self._modes) < 0xFF and check.width < 2**32 and check.height < 2**32)
        if compact:
            self._sha += bytes.fromhex(check.sha256)
            self._format.append(self._formats.id(check.format))
            self._mode.append(self._modes.id(check.mode))
            self._flags.append(0 if check.dhash is None else self._HAS_DHASH)
            self._dhash.append(check.dhash or 0)
            self._width.append(check.width)
            self._height.append(check.height)
        else:
            self._side[len(self._size)] = check
            self._sha += bytes(DIGEST_BYTES)
            self._format.append(self._SIDE)
            self._mode.append(0)
            self._flags.append(0)
            self._dhash.append(0)
            self._width.append(0)
            self._height.append(0)
        self._size.append(check.size)

    def extend(self, checks: Iterable[ImageCheck]) -> None:
        for check in checks:
            self.append(check)

    def __len__(self) -> int:
        return len(self._size)

    def ok(self, index: int) -> bool:
        return self._format[index] != self._SIDE or self._side[index].ok

    def digest(self, index: int) -> bytes:
        """The raw sha256 of a valid image (the hex string's 32 bytes)."""
        if self._format[index] == self._SIDE:
            return bytes.fromhex(self._side[index].sha256)
        return bytes(self._sha[index * DIGEST_BYTES:(index + 1) * DIGEST_BYTES])

    def size(self, index: int) -> int:
        return self._size[index]

    def format(self, index: int) -> str:
        fmt = self._format[index]
        return self._side[index].format if fmt == self._SIDE else self._formats[fmt]

    def dhash(self, index: int) -> int | None:
        if self._format[index] == self._SIDE:
            return self._side[index].dhash
        return self._dhash[index] if self._flags[index] & self._HAS_DHASH else None

    def _at(self, index: int) -> ImageCheck:
        fmt = self._format[index]
        if fmt == self._SIDE:
            return self._side[index]
        return ImageCheck(self._sha[index * DIGEST_BYTES:(index + 1) * DIGEST_BYTES].hex(), self._size[index],
                          self._formats[fmt], self._width[index], self._height[index], self._modes[self._mode[index]],
                          "", self._dhash[index] if self._flags[index] & self._HAS_DHASH else None)


class Reject(NamedTuple):
    """A file left out of the dataset, and why (`"<code>: <detail>"`)."""

    path: str
    reason: str

    @property
    def code(self) -> str:
        return reason_code(self.reason)


def reason_code(reason: str) -> str:
    return reason.split(":", 1)[0]


def _claimed_format(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WebP"
    return ""


def check_bytes(data: bytes, *, min_side: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageCheck:
    """Validates one image given as bytes: hash, header checks, then a full decode."""
    sha = hashlib.sha256(data).hexdigest()
    size = len(data)
    if not size:
        return ImageCheck(sha, 0, reason=f"{EMPTY}: the file is empty (0 bytes)")
    fmt, width, height, mode = "", 0, 0, ""
    try:
        with Image.open(io.BytesIO(data), formats=_OPEN_FORMATS) as img:
            fmt, (width, height), mode = img.format or "", img.size, img.mode
            pixels = width * height
            if pixels > max_pixels:
                return ImageCheck(sha, size, fmt, width, height, mode,
                                  f"{TOO_MANY_PIXELS}: {width}x{height} = {pixels} pixels is over the limit of "
                                  f"{max_pixels} (decompression-bomb guard)")
            if width < 1 or height < 1:
                return ImageCheck(sha, size, fmt, width, height, mode, f"{CORRUPT}: the image is {width}x{height}")
            if min(width, height) < min_side:
                return ImageCheck(sha, size, fmt, width, height, mode,
                                  f"{TOO_SMALL}: {width}x{height} has a side shorter than the minimum {min_side}")
            img.load()  # the full decode: truncated or damaged data fails here
            dhash = _dhash(img, data)
    except Image.DecompressionBombError as exc:  # Pillow's own refusal, raised by Image.open
        return ImageCheck(sha, size, reason=f"{TOO_MANY_PIXELS}: {exc}")
    except UnidentifiedImageError:
        claimed = _claimed_format(data)
        if claimed:  # the signature of an accepted format, but no readable header after it
            return ImageCheck(sha, size, reason=f"{CORRUPT}: starts like a {claimed} file but its header cannot be "
                                                f"read (truncated or damaged)")
        return ImageCheck(sha, size, reason=f"{NOT_AN_IMAGE}: not a JPEG, PNG, BMP, GIF or WebP image")
    except Exception as exc:  # noqa: BLE001 - malformed files make decoders raise all sorts; all mean corrupt
        detail = str(exc) or type(exc).__name__
        return ImageCheck(sha, size, fmt, width, height, mode, f"{CORRUPT}: cannot be decoded: {detail}")
    if fmt not in FORMATS:  # pragma: no cover - Image.open only tried the accepted decoders
        return ImageCheck(sha, size, fmt, width, height, mode, f"{NOT_AN_IMAGE}: unsupported format {fmt}")
    return ImageCheck(sha, size, fmt, width, height, mode, dhash=dhash)


def _dhash(img: Image.Image, data: bytes) -> int | None:
    """The difference hash of a decoded image, equal to image_hash.dhash(data)."""
    if image_hash.draft_changes_decoding(img):
        return image_hash.dhash(data)
    try:
        return image_hash.dhash_image(img)
    except Exception:  # noqa: BLE001 - a hash is optional; the image itself decoded
        return None


_FIRST_READ = 64 * 1024


def read_file(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The whole file, read with plain os calls: most training images fit the first read, which then
    is the only call besides open and close (no buffered file object, no fstat)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the worker
    try:
        data = os.read(fd, _FIRST_READ)
        if not data or len(data) == _FIRST_READ:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            if st.st_size > max_bytes:
                raise _TooLarge(st.st_size)
            if data:  # read on to the end (a file may grow meanwhile: stay within the limit)
                parts, total = [data], len(data)
                while chunk := os.read(fd, max(st.st_size - total + 1, 1024 * 1024)):
                    parts.append(chunk)
                    total += len(chunk)
                    if total > max_bytes:
                        raise _TooLarge(total)
                data = b"".join(parts)
        elif len(data) > max_bytes:
            raise _TooLarge(len(data))
        return data
    finally:
        os.close(fd)


class _TooLarge(Exception):
    def __init__(self, size: int):
        super().__init__(size)
        self.size = size


def check_path(path: str | os.PathLike, *, min_side: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> ImageCheck:
    try:
        data = read_file(path, max_bytes)
    except _TooLarge as exc:
        return ImageCheck("", exc.size, reason=f"{TOO_LARGE}: {exc.size} bytes is over the limit of {max_bytes} "
                                               f"per file")
    except OSError as exc:
        return ImageCheck("", 0, reason=f"{UNREADABLE}: {exc.strerror or exc}")
    return check_bytes(data, min_side=min_side, max_pixels=max_pixels)


def _check_chunk(job: tuple[Sequence[str], int, int, int]) -> list[ImageCheck]:
    paths, min_side, max_pixels, max_bytes = job
    return [check_path(p, min_side=min_side, max_pixels=max_pixels, max_bytes=max_bytes) for p in paths]


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def start_method() -> str:
    """fork when this process runs a single thread (CLI, benchmark): cheapest. With threads about
    (a gRPC server, Kafka consumers), forking could copy a lock some thread holds; forkserver then
    forks workers from a clean single-threaded server process instead."""
    return "fork" if threading.active_count() == 1 else "forkserver"


class _PathQueue:
    """Paths waiting for validation, in order: the batches as handed over (the walk's are PathsViews
    over its compact candidates, so a waiting path costs nothing), each path read when it is taken.
    A batch must not change once added."""

    def __init__(self):
        self._batches: collections.deque[Sequence[str | os.PathLike]] = collections.deque()
        self._taken = 0  # of the first batch
        self._len = 0

    def extend(self, paths: Sequence[str | os.PathLike]) -> None:
        if len(paths):
            self._batches.append(paths)
            self._len += len(paths)

    def take(self, count: int) -> list[str]:
        out: list[str] = []
        while len(out) < count and self._batches:
            batch = self._batches[0]
            end = min(len(batch), self._taken + count - len(out))
            out.extend(os.fspath(batch[i]) for i in range(self._taken, end))
            self._taken = end
            if end == len(batch):
                self._batches.popleft()
                self._taken = 0
        self._len -= len(out)
        return out

    def __len__(self) -> int:
        return self._len


class ValidationPool:
    """Validates files as they are found: `add` hands over each batch the walk of the source yields,
    so workers decode while the rest of the source is still being listed; `results` returns every
    outcome in the order the paths were added.

    `workers` is the number of CPUs put to work, this process included: `workers - 1` pool processes,
    and, once the walk is over, this process validates chunks itself while waiting for theirs (on a
    2-CPU machine that is one worker process and this one, rather than two workers and a third process
    mostly shuffling results between them).

    The pool starts once `pool_threshold` files are waiting (a small source is validated here alone:
    starting a worker would cost more than it saves). Chunks have at most `chunk_files` files and
    shrink as the work runs out (guided self-scheduling: a share of what is left per CPU), so the
    per-chunk cost stays small next to decoding thumbnails, while the last chunks, large photos
    included, end close together.
    """

    def __init__(self, *, min_side: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_bytes: int = DEFAULT_MAX_FILE_BYTES, workers: int | None = None,
                 pool_threshold: int = POOL_THRESHOLD, chunk_files: int = 256, context: str | None = None):
        self._limits = (min_side, max_pixels, max_bytes)
        self.workers = workers or available_cpus()
        self.pool_threshold = pool_threshold
        self.chunk_files = chunk_files
        self.queue_depth = 3  # chunks waiting per worker, so it never idles while this process decodes
        self.context = context
        self._pending = _PathQueue()
        self._parts: collections.deque = collections.deque()  # per chunk, in order: a Future or a list
        # Outcomes of the chunks done so far, in order: finished chunks are moved here as soon as every
        # earlier one is done, so that their ImageCheck tuples are not all held until the end.
        self._checks = CheckList()
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> ValidationPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, paths: Sequence[str | os.PathLike]) -> None:
        self._pending.extend(paths if isinstance(paths, Sequence) else list(paths))
        if self._pool is None and (self.workers <= 1 or len(self._pending) < self.pool_threshold):
            return
        if self._pool is None:
            method = self.context or start_method()
            ctx = multiprocessing.get_context(method)
            if method == "forkserver":
                ctx.set_forkserver_preload([__name__])
            self._pool = ProcessPoolExecutor(max_workers=self.workers - 1, mp_context=ctx)
            log.info("validating on worker processes", extra={"processes": self.workers - 1, "start_method": method})
        # While this process walks, keep each worker fed with up to two full chunks; the rest waits
        # for results(), where the chunks shrink.
        while len(self._pending) >= self.chunk_files and self._in_flight() < self.queue_depth * (self.workers - 1):
            self._submit(self._pending.take(self.chunk_files))
        self._drain()

    def _next_chunk(self) -> list[str]:
        size = max(MIN_CHUNK, min(self.chunk_files, len(self._pending) // (self.workers * 2)))
        return self._pending.take(size)

    def _submit(self, names: list[str]) -> None:
        assert self._pool is not None
        self._parts.append(self._pool.submit(_check_chunk, (names, *self._limits)))

    def _in_flight(self) -> int:
        return sum(1 for part in self._parts if not isinstance(part, list) and not part.done())

    def _drain(self) -> None:
        """Moves the leading finished chunks' outcomes into the compact list."""
        while self._parts and (isinstance(self._parts[0], list) or self._parts[0].done()):
            part = self._parts.popleft()
            self._checks.extend(part if isinstance(part, list) else part.result())

    def results(self) -> CheckList:
        if self._pool is None:
            if self._pending:
                self._parts.append(_check_chunk((self._pending.take(len(self._pending)), *self._limits)))
        else:
            pool_size = self.workers - 1
            while self._pending:
                while self._pending and self._in_flight() < self.queue_depth * pool_size:
                    self._submit(self._next_chunk())
                if self._pending:  # this process takes a chunk too
                    self._parts.append(_check_chunk((self._next_chunk(), *self._limits)))
                self._drain()
        while self._parts:
            part = self._parts.popleft()
            self._checks.extend(part if isinstance(part, list) else part.result())
        out, self._checks = self._checks, CheckList()
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def check_paths(paths: Sequence[str | os.PathLike], *, min_side: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS,
                max_bytes: int = DEFAULT_MAX_FILE_BYTES, workers: int | None = None,
                pool_threshold: int = POOL_THRESHOLD, context: str | None = None) -> list[ImageCheck]:
    """Validates every path, in order. `workers` processes (default: one per available CPU); a small
    batch, or workers=1, runs in this process."""
    with ValidationPool(min_side=min_side, max_pixels=max_pixels, max_bytes=max_bytes, workers=workers,
                        pool_threshold=pool_threshold, context=context) as pool:
        pool.add(paths)
        return pool.results()
