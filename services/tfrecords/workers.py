"""The builder's encoding side: `ChunkEncoder` turns list entries into framed TFRecord bytes, and
`WorkerPool` runs encoders in worker processes.

The workers are plain `python -c` child processes speaking length-prefixed pickles over their stdin
and stdout, not `multiprocessing`: its spawn mode re-imports the caller's `__main__` in every child,
which breaks scripts without an `if __name__ == "__main__"` guard and makes every worker of the service
import gRPC, Kafka and the rest; fork mode would copy a process that runs gRPC and Kafka threads. A child
imports only this module (no TensorFlow) and is ready in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from services.common.records import example
from services.common.storage import LocalObjectStore, ObjectCorrupted, ObjectNotFound, ObjectStore
from services.tfrecords.dataset import CONTENT_KEY, DatasetError

FETCH_THREADS = 8  # concurrent GETs per worker against a remote store
_READ_SIZE = 1024 * 1024
TASKS_PER_WORKER = 2  # chunks queued at each worker: one being encoded, one waiting

# (image key relative to the dataset, class id per task, difference hash or None when the dataset has none)
Chunk = Sequence[tuple[str, tuple[int, ...], int | None]]


@dataclass(frozen=True)
class EncodeJob:
    """What an encoder needs for one build (pickled once per worker process)."""

    dataset_prefix: str
    class_names: list[list[str]]
    max_side: int
    jpeg_quality: int
    local_root: str | None  # a local store: image files are read directly
    store_factory: Callable[[], ObjectStore] | None  # otherwise: how a worker opens the store


class ChunkEncoder:
    """Fetches a chunk's images, checks each against the sha256 in its name, re-encodes it if asked,
    and returns the chunk's framed Examples, in order. image/dhash: the dataset's hash of the image
    (hashes.tsv, carried in the chunk) when the bytes are stored as they are; the hash of the new bytes
    when re-encoding, so that it always equals image_hash.dhash(image/encoded)."""

    def __init__(self, job: EncodeJob, store: ObjectStore | None = None):
        self.job = job
        self.encoder = example.ExampleEncoder(job.class_names)
        self.root = Path(job.local_root) if job.local_root else None
        self._base = f"{job.local_root}/{job.dataset_prefix}/" if job.local_root else ""
        self._store = store
        self._threads: ThreadPoolExecutor | None = None

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            self._store = LocalObjectStore(self.root) if self.root else self.job.store_factory()
        return self._store

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)

    def encode(self, entries: Chunk) -> bytes:
        datas = self._fetch([key for key, _, _ in entries])
        frame, one = example.frame, self._example
        return b"".join([frame(one(key, labels, dhash, data))
                         for (key, labels, dhash), data in zip(entries, datas, strict=True)])

    def _example(self, key: str, labels: tuple[int, ...], dhash: int | None, data: bytes) -> bytes:
        match = CONTENT_KEY.fullmatch(key)
        digest = hashlib.sha256(data).hexdigest()
        if match and digest != match.group(2):
            raise DatasetError(f"image {self.job.dataset_prefix}/{key} is damaged: its content has sha256 "
                               f"{digest}, not the one its name records; prepare the dataset again")
        try:
            if self.job.max_side:
                data, height, width = example.reencode(data, self.job.max_side, self.job.jpeg_quality)
                fmt = "jpeg"
                dhash = _dhash(data)  # image/dhash is the hash of image/encoded: these bytes, not the original's
            else:
                fmt, height, width = example.image_info(data)
        except (ValueError, OSError) as exc:
            raise DatasetError(f"image {self.job.dataset_prefix}/{key} cannot be read: {exc}") from None
        return self.encoder.encode(encoded=data, image_format=fmt, height=height, width=width, filename=key,
                                   source_id=digest, labels=labels, dhash=dhash)

    def _fetch(self, keys: list[str]) -> list[bytes]:
        if self.root is not None:
            return [self._read_local(key) for key in keys]
        unique = list(dict.fromkeys(keys))  # oversampled entries repeat an image: fetch it once
        if self._threads is None:
            self._threads = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="tfrecords-fetch")
        found = dict(zip(unique, self._threads.map(self._get, unique), strict=True))
        return [found[key] for key in keys]

    def _read_local(self, key: str) -> bytes:
        if not CONTENT_KEY.fullmatch(key):  # unusual names go through the store's own checks
            return self._get(key)
        try:  # content-addressed names have no '..' or odd segments: read the file directly
            fd = os.open(self._base + key, os.O_RDONLY)
        except FileNotFoundError:
            raise self._missing(key) from None
        try:  # os.read rather than open().read(): half the cost for the small files of a typical dataset
            chunks = []
            while chunk := os.read(fd, _READ_SIZE):
                chunks.append(chunk)
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        finally:
            os.close(fd)

    def _get(self, key: str) -> bytes:
        try:
            return self.store.get_bytes(f"{self.job.dataset_prefix}/{key}")
        except ObjectNotFound:
            raise self._missing(key) from None
        except ObjectCorrupted as exc:
            raise DatasetError(exc.message) from None

    def _missing(self, key: str) -> DatasetError:
        return DatasetError(f"image {self.job.dataset_prefix}/{key} is listed but missing from the dataset; "
                            f"prepare the dataset again")


def _dhash(data: bytes) -> int | None:
    from services.common.image_hash import dhash  # numpy and PIL: only for builds that re-encode

    return dhash(data)


# --------------------------------------------------------------------------- wire


def _send(stream: BinaryIO, message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)))
    stream.write(data)
    stream.flush()


def _recv(stream: BinaryIO) -> object | None:
    """The next message, or None at the end of the stream."""
    header = _read_exactly(stream, 8)
    if header is None:
        return None
    data = _read_exactly(stream, struct.unpack("<Q", header)[0])
    if data is None:
        raise EOFError("the stream ended inside a message")
    return pickle.loads(data)


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            if left == size:
                return None
            raise EOFError("the stream ended inside a message")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _portable(exc: BaseException) -> BaseException:
    """The exception itself if it survives pickling, else a RuntimeError carrying its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any pickling trouble
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def serve() -> None:
    """A worker process's main loop: the job, then (task id, chunk) until stdin closes."""
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever a library prints goes to stderr, never into the channel
    source = sys.stdin.buffer
    # Tasks are read ahead by a thread, so the parent never blocks writing the next one to a full pipe.
    inbox: queue.Queue = queue.Queue()

    def read_ahead() -> None:
        try:
            while (message := _recv(source)) is not None:
                inbox.put(message)
        finally:
            inbox.put(None)

    threading.Thread(target=read_ahead, name="tfrecords-inbox", daemon=True).start()
    job = inbox.get()
    if job is None:
        return
    encoder = ChunkEncoder(job)
    while (message := inbox.get()) is not None:
        task_id, chunk = message
        try:
            reply = (task_id, True, encoder.encode(chunk))
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent
            if not isinstance(exc, DatasetError):
                traceback.print_exc()
            reply = (task_id, False, _portable(exc))
        _send(channel, reply)


# --------------------------------------------------------------------------- parent side


class WorkerPool:
    """`workers` encoder processes, started at once (they boot while the caller prepares the work);
    `imap` hands chunks to the least busy one (at most TASKS_PER_WORKER queued each) and yields the
    encoded chunks in order."""

    def __init__(self, workers: int):
        root = str(Path(__file__).resolve().parents[2])  # the directory holding the `services` package
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self._cond = threading.Condition()
        self._results: dict[int, tuple[bool, object]] = {}
        self._error: str | None = None
        self._closing = False
        self._procs: list[subprocess.Popen] = []
        self._load: list[int] = []
        self._owner: dict[int, int] = {}
        try:
            for index in range(workers):
                proc = subprocess.Popen(
                    [sys.executable, "-c", "from services.tfrecords.workers import serve; serve()"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
                self._procs.append(proc)
                self._load.append(0)
                threading.Thread(target=self._collect, args=(index,), name=f"tfrecords-worker-{index}",
                                 daemon=True).start()
        except BaseException:
            self.close(kill=True)
            raise

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(kill=exc_type is not None)

    def imap(self, job: EncodeJob, chunks: Iterable[Chunk]) -> Iterator[bytes]:
        """Encodes `chunks` for `job` (one job per pool) and yields the results in order. The chunks
        are taken from the iterable only as workers have room: at most TASKS_PER_WORKER each."""
        for index, proc in enumerate(self._procs):
            try:
                _send(proc.stdin, job)
            except OSError:
                raise RuntimeError(self._error or f"encoding worker {index} did not start") from None
        source = iter(chunks)
        submitted = 0
        exhausted = False
        wanted = 0
        while True:
            while not exhausted and min(self._load) < TASKS_PER_WORKER:
                chunk = next(source, None)
                if chunk is None:
                    exhausted = True
                    break
                self._submit(submitted, chunk)
                submitted += 1
            if wanted >= submitted:
                return
            with self._cond:
                self._cond.wait_for(lambda wanted=wanted: wanted in self._results or self._error is not None)
                if wanted not in self._results:
                    raise RuntimeError(self._error)
                ok, value = self._results.pop(wanted)
                self._load[self._owner.pop(wanted)] -= 1
            if not ok:
                raise value
            yield value
            wanted += 1

    def _submit(self, task_id: int, chunk: Chunk) -> None:
        with self._cond:
            index = min(range(len(self._procs)), key=self._load.__getitem__)
            self._load[index] += 1
            self._owner[task_id] = index
        try:
            _send(self._procs[index].stdin, (task_id, chunk))
        except (BrokenPipeError, OSError):
            with self._cond:
                self._cond.wait_for(lambda: self._error is not None, timeout=5)
                raise RuntimeError(self._error or f"encoding worker {index} stopped taking work") from None

    def _collect(self, index: int) -> None:
        proc = self._procs[index]
        try:
            while (message := _recv(proc.stdout)) is not None:
                task_id, ok, value = message
                with self._cond:
                    self._results[task_id] = (ok, value)
                    self._cond.notify_all()
        except Exception as exc:  # noqa: BLE001 - a broken channel ends this worker
            problem = f"{type(exc).__name__}: {exc}"
        else:
            problem = None
        code = proc.wait()
        with self._cond:
            if not self._closing and self._error is None:
                self._error = (f"encoding worker {index} (pid {proc.pid}) exited with code {code}"
                               + (f" ({problem})" if problem else "") + "; see its output above")
            self._cond.notify_all()

    def close(self, kill: bool = False) -> None:
        with self._cond:
            self._closing = True
        for proc in self._procs:
            try:
                if kill:
                    proc.kill()
                else:
                    proc.stdin.close()  # the worker's loop ends at the end of its input
            except OSError:
                pass
        for proc in self._procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass
