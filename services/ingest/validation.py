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

import errno
import hashlib
import io
import logging
import multiprocessing
import os
import stat
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import NamedTuple

from PIL import Image, UnidentifiedImageError

from services.common import image_hash
from services.common.dataset_options import DEFAULT_MAX_PIXELS
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
        self._pending: list[str] = []
        self._parts: list = []  # per chunk, in order: a Future from the pool, or the list computed here
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> ValidationPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, paths: Sequence[str | os.PathLike]) -> None:
        self._pending.extend(os.fspath(p) for p in paths)
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
            self._submit(self._pending[:self.chunk_files])
            del self._pending[:self.chunk_files]

    def _next_chunk(self) -> list[str]:
        size = max(MIN_CHUNK, min(self.chunk_files, len(self._pending) // (self.workers * 2)))
        chunk, self._pending = self._pending[:size], self._pending[size:]
        return chunk

    def _submit(self, names: list[str]) -> None:
        assert self._pool is not None
        self._parts.append(self._pool.submit(_check_chunk, (names, *self._limits)))

    def _in_flight(self) -> int:
        return sum(1 for part in self._parts if not isinstance(part, list) and not part.done())

    def results(self) -> list[ImageCheck]:
        if self._pool is None:
            if self._pending:
                self._parts.append(_check_chunk((self._pending, *self._limits)))
                self._pending = []
        else:
            pool_size = self.workers - 1
            while self._pending:
                while self._pending and self._in_flight() < self.queue_depth * pool_size:
                    self._submit(self._next_chunk())
                if self._pending:  # this process takes a chunk too
                    self._parts.append(_check_chunk((self._next_chunk(), *self._limits)))
        out: list[ImageCheck] = []
        for part in self._parts:
            out.extend(part if isinstance(part, list) else part.result())
        self._parts = []
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
