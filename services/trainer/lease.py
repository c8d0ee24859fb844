"""Which trainer replica trains which job: one lease per job in the object store,
state/trainer/<job>/lease.json = {holder, token, expires_at, done}.

Why a lease in the object store and not Kafka partition ownership: a job's records_built is consumed
once, and its offset is committed as soon as the job is queued (training runs for minutes to hours in
the worker thread, far past any poll interval). After a rebalance the partition's new owner sees no
event for the jobs already queued or running, so partition ownership says nothing about who trains
them. The job's state and its model prefix live in the object store, so the lease lives there too,
and the fence is checked where the writes go.

- **Acquire** with a compare-and-set (ObjectStore.put_bytes_if): create the lease when there is none,
  or replace an expired one with `token + 1`. Exactly one replica wins a race.
- **Renew** (the heartbeat) every `lease_seconds / 3`, again compare-and-set on the version this replica
  wrote: a replica whose lease was taken finds another version there and learns it lost the job.
- **Fence.** Before every write to the job's model prefix and state, the holder checks that the stored
  lease is still its own (holder and token) and that, by its own clock, at least `lease_seconds / 3`
  remain: a replica that was paused or cut off past that stops writing before anyone may take over.
  S3 cannot make a write conditional on another object, so the fence bounds, rather than excludes,
  the race: a write that takes longer than that margin after its check could overlap a new holder's.
- **Expiry** is wall-clock time (`expires_at`); replicas' clocks must agree to well within the margin.
- **Release**: `done` when the job ended (no sweep ever looks at it again), or expired at once when the
  replica shuts down, so another replica takes the job over without waiting for the lease to lapse.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO

from services.common.errors import FailedPrecondition
from services.common.storage import ObjectNotFound, ObjectStore, VersionMismatch
from services.common.storage.interface import DEFAULT_CONTENT_TYPE, ObjectInfo

log = logging.getLogger("classforge.trainer")

LEASE_PREFIX = "state/trainer/"
LEASE_NAME = "lease.json"


def default_replica_id() -> str:
    """Unique per process: a restarted replica is a new holder and must take its jobs over like any other."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class LeaseLost(FailedPrecondition):
    """This replica no longer holds the job's lease: another replica took the job over (or may, as the
    lease could not be renewed in time). The replica stops working on it without writing anything."""

    def __init__(self, job_id: str, why: str):
        super().__init__(f"lease of job {job_id!r} lost: {why}")
        self.job_id = job_id


@dataclass(frozen=True)
class Lease:
    job_id: str
    holder: str
    token: int  # the fencing token: one more at every takeover
    expires_at: float
    version: str = ""  # the store's version of the lease object as this replica wrote it
    done: bool = False

    def record(self) -> bytes:
        return json.dumps({"job_id": self.job_id, "holder": self.holder, "token": self.token,
                           "expires_at": self.expires_at, "done": self.done}).encode()

    @classmethod
    def parse(cls, data: bytes, version: str) -> Lease:
        record = json.loads(data)
        return cls(record["job_id"], record["holder"], int(record["token"]), float(record["expires_at"]),
                   version, bool(record.get("done")))


class Leases:
    """This replica's leases. Thread-safe: the worker, the renewer and the sweeper share it."""

    def __init__(self, store: ObjectStore, holder: str, lease_seconds: float,
                 clock: Callable[[], float] = time.time):
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self.store, self.holder, self.lease_seconds, self.clock = store, holder, lease_seconds, clock
        self.margin = lease_seconds / 3  # renewal period, and the least time left that a write needs
        self._lock = threading.Lock()
        self._held: dict[str, Lease] = {}
        self._lost: set[str] = set()
        self._ended: set[str] = set()  # released by this replica when the job ended

    def key(self, job_id: str) -> str:
        return f"{LEASE_PREFIX}{job_id}/{LEASE_NAME}"

    def read(self, job_id: str) -> Lease | None:
        try:
            data, version = self.store.get_versioned(self.key(job_id))
        except ObjectNotFound:
            return None
        return Lease.parse(data, version)

    def acquire(self, job_id: str) -> Lease | None:
        """The job's lease for this replica, or None while another replica holds it (or won the race)."""
        with self._lock:
            if job_id in self._held:
                return self._held[job_id]
        current = self.read(job_id)
        now = self.clock()
        if current is not None and current.holder != self.holder and current.expires_at > now and not current.done:
            return None
        token = 1 if current is None else current.token + 1
        lease = Lease(job_id, self.holder, token, now + self.lease_seconds)
        try:
            version = self.store.put_bytes_if(self.key(job_id), lease.record(), current.version if current else None,
                                              "application/json")
        except VersionMismatch:
            return None
        lease = Lease(job_id, self.holder, token, lease.expires_at, version)
        with self._lock:
            self._held[job_id] = lease
            self._lost.discard(job_id)
        if current is not None and current.holder != self.holder and not current.done:
            log.warning("took over the job: its replica's lease expired", extra={
                "job_id": job_id, "previous_holder": current.holder, "token": token})
        return lease

    def renew(self, job_id: str) -> Lease:
        """Extends the lease; LeaseLost when another replica replaced it meanwhile."""
        held = self.held(job_id)
        if held is None:
            raise LeaseLost(job_id, "not held by this replica")
        lease = Lease(job_id, self.holder, held.token, self.clock() + self.lease_seconds)
        try:
            version = self.store.put_bytes_if(self.key(job_id), lease.record(), held.version, "application/json")
        except VersionMismatch:
            self._lose(job_id)
            raise LeaseLost(job_id, "another replica took it over") from None
        lease = Lease(job_id, self.holder, held.token, lease.expires_at, version)
        with self._lock:
            if job_id in self._held:
                self._held[job_id] = lease
        return lease

    def release(self, job_id: str, done: bool) -> None:
        """Gives the job up: `done` when it ended, else for another replica to take over at once."""
        with self._lock:
            held = self._held.pop(job_id, None)
            if held is not None and done:
                self._ended.add(job_id)
        if held is None:
            return
        lease = Lease(job_id, self.holder, held.token, 0.0, done=done)
        try:
            self.store.put_bytes_if(self.key(job_id), lease.record(), held.version, "application/json")
        except VersionMismatch:
            log.info("lease already taken over when released", extra={"job_id": job_id})
        except Exception:  # noqa: BLE001 - the lease expires on its own
            log.warning("could not release the lease; it expires on its own", extra={"job_id": job_id},
                        exc_info=True)

    def held(self, job_id: str) -> Lease | None:
        with self._lock:
            return self._held.get(job_id)

    def held_jobs(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def mine(self, job_id: str) -> bool:
        """Held now, or ended here: this replica's own copy of the job's state is the latest."""
        with self._lock:
            return job_id in self._held or job_id in self._ended

    def lost(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._lost

    def forget(self, job_id: str) -> None:
        """Drops a lease this replica holds without writing it (it lost the job some other way)."""
        self._lose(job_id)

    def check_writable(self, job_id: str) -> None:
        """Local and cheap, before a write of the job's state: refused once the lease was lost or has
        less than the margin left by this replica's clock. Jobs this replica never leased pass (their
        state is written before any lease: a cancel before training, an invalid config)."""
        with self._lock:
            held, lost = self._held.get(job_id), job_id in self._lost
        if lost:
            raise LeaseLost(job_id, "another replica took it over")
        if held is not None and held.expires_at - self.clock() < self.margin:
            raise LeaseLost(job_id, f"not renewed in time (expires in {held.expires_at - self.clock():.1f}s)")

    def verify(self, job_id: str) -> None:
        """Before a write to the job's model prefix: the stored lease is still this replica's, with the
        margin left. Raises LeaseLost otherwise."""
        held = self.held(job_id)
        if held is None:
            raise LeaseLost(job_id, "not held by this replica")
        self.check_writable(job_id)
        current = self.read(job_id)
        if current is None or current.holder != self.holder or current.token != held.token:
            self._lose(job_id)
            who = "nobody" if current is None else f"{current.holder} (token {current.token})"
            raise LeaseLost(job_id, f"the stored lease is now {who}'s, not this replica's (token {held.token})")

    def _lose(self, job_id: str) -> None:
        with self._lock:
            self._held.pop(job_id, None)
            self._lost.add(job_id)


class FencedStore(ObjectStore):
    """The object store as one job's run sees it: every write first checks the job's lease
    (Leases.verify), so a replica that lost the job never writes to its model prefix again. Each
    checkpoint also gets writer.json (holder and token), written before its state.json, so that a
    model prefix tells which replica wrote which checkpoint."""

    def __init__(self, store: ObjectStore, job_id: str, leases: Leases):
        self.inner, self.job_id, self.leases = store, job_id, leases
        self.useful_write_threads = store.useful_write_threads

    def _fence(self, key: str) -> None:
        self.leases.verify(self.job_id)
        if "/checkpoints/" in key and key.endswith("/state.json"):
            held = self.leases.held(self.job_id)
            writer = {"holder": self.leases.holder, "token": held.token if held else 0, "at": time.time()}
            self.inner.put_bytes(key.removesuffix("state.json") + "writer.json", json.dumps(writer).encode(),
                                 "application/json")

    def local_path(self, key: str = ""):
        return self.inner.local_path(key)

    def put_bytes(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        self._fence(key)
        return self.inner.put_bytes(key, data, content_type)

    def put_file(self, key: str, path, content_type: str = DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        self._fence(key)
        return self.inner.put_file(key, path, content_type)

    def put_stream(self, key: str, stream: BinaryIO, content_type: str = DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        self._fence(key)
        return self.inner.put_stream(key, stream, content_type)

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        return self.inner.get_versioned(key)

    def put_bytes_if(self, key: str, data: bytes, version: str | None,
                     content_type: str = DEFAULT_CONTENT_TYPE) -> str:
        self._fence(key)
        return self.inner.put_bytes_if(key, data, version, content_type)

    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def delete(self, key: str) -> None:
        self._fence(key)
        self.inner.delete(key)

    def delete_prefix(self, prefix: str) -> int:
        self._fence(prefix)
        return self.inner.delete_prefix(prefix)

    def ping(self) -> None:
        self.inner.ping()

    def uri(self, key: str) -> str:
        return self.inner.uri(key)

    def key_from_uri(self, uri: str) -> str:
        return self.inner.key_from_uri(uri)

    def _open(self, key: str) -> AbstractContextManager[tuple[BinaryIO, str | None]]:
        return self.inner._open(key)  # noqa: SLF001 - the same store underneath

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner._list(prefix)  # noqa: SLF001
