"""The tfrecords service's logic: start builds, report them, react to dataset_prepared. No gRPC and no
Kafka here: the servicer calls `start_build` / `get_build`, the event bus feeds `handle_event`.

Builds run in a small thread pool (each build encodes in its own worker processes); one build id is
never built twice at once in this process: a second request joins the running build. What is built is
in the object store (records/<build_id>/manifest.json), so a restarted service or another replica
answers GetBuild for every finished build; running and failed builds are known to the replica that
ran them.

Events: dataset_prepared -> build with the default options -> records_built (or stage_failed for a
problem with the user's data, which no retry can fix). Unexpected errors (the store unreachable …)
propagate, so the bus retries the event and dead-letters it in the end. Every event of a job is
answered once: a marker `state/tfrecords/jobs/<job>.json` is written after publishing, and a
redelivered dataset_prepared (same event or a new event id for the same job) finds it and publishes
nothing; a finished build is never rebuilt (its records_built is published again only when the marker
was not written, after a crash between the two). While a job's build runs the service sends heartbeats;
a job cancelled meanwhile is answered with job_cancelled (the build itself still completes, manifest
last, and can serve a later job). A failed build removes what it wrote.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from classforge.v1 import common_pb2, events_pb2
from classforge.v1 import tfrecords_service_pb2 as pb
from services.common.errors import ClassforgeError, InvalidArgument, NotFound, Unavailable
from services.common.events import EventBus, new_event, payload_kind
from services.common.stage_work import JobCancelled, Stage
from services.common.storage import ObjectStore
from services.tfrecords import metrics
from services.tfrecords.builder import (
    DEFAULT_MIN_SHARDS,
    BuildOptions,
    BuildResult,
    RecordsBuilder,
    build_id_for,
    read_manifest,
    records_prefix,
)
from services.tfrecords.dataset import check_complete, check_dataset_id

log = logging.getLogger("classforge.tfrecords")

Build = pb.Build
Status = pb.BuildStatus
STATE_PREFIX = "state/tfrecords/jobs/"
_BUILD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}-[0-9a-f]{10}")
_SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")


class RecordsDomain:
    def __init__(self, store: ObjectStore, bus: EventBus, builder: RecordsBuilder, *,
                 min_shards: int = DEFAULT_MIN_SHARDS, concurrent_builds: int = 1, producer: str = "tfrecords",
                 heartbeat_seconds: float = 30.0):
        self.store, self.bus, self.builder = store, bus, builder
        self.stage = Stage(bus, store, common_pb2.JOB_STAGE_RECORDS, producer, heartbeat_seconds=heartbeat_seconds)
        self.min_shards = min_shards
        self.producer = producer
        self._executor = ThreadPoolExecutor(max(1, concurrent_builds), thread_name_prefix="tfrecords-build")
        self._lock = threading.Lock()
        self._running: dict[str, Future] = {}
        self._builds: dict[str, Build] = {}  # running and failed builds of this process, by build id

    def options(self, proto: pb.RecordsOptions | None = None) -> BuildOptions:
        """BuildOptions from a request (0 = default), with this service's read parallelism as min_shards."""
        proto = proto or pb.RecordsOptions()
        return BuildOptions(shard_bytes=proto.shard_bytes, max_side=proto.max_side,
                            jpeg_quality=proto.jpeg_quality, min_shards=self.min_shards)

    # -- gRPC

    def start_build(self, dataset_id: str, options: pb.RecordsOptions | None = None) -> Build:
        """Validates, then builds in the background: RUNNING (poll get_build), or SUCCEEDED at once
        when the records exist. Dataset problems found later (a bad list line) make the build FAILED."""
        check_dataset_id(dataset_id)
        build_options = self.options(options)
        build_id = build_id_for(dataset_id, build_options)
        with self._lock:
            running = build_id in self._running and not self._running[build_id].done()
        if not running:
            manifest = read_manifest(self.store, records_prefix(build_id))
            if manifest is not None:
                return self._succeeded(build_id, manifest)
            check_complete(self.store, dataset_id)
        self._submit(dataset_id, build_options)
        return self.get_build(build_id)

    def get_build(self, build_id: str) -> Build:
        if not build_id:
            raise InvalidArgument("build_id", "is required")
        if not _BUILD_ID.fullmatch(build_id):
            raise InvalidArgument("build_id", f"{build_id!r} is not a build id (<dataset id>-<10 hex digits>)")
        with self._lock:
            known = self._builds.get(build_id)
        if known is not None and known.status != Status.BUILD_STATUS_SUCCEEDED:
            return known
        manifest = read_manifest(self.store, records_prefix(build_id))
        if manifest is None:
            raise NotFound("build", build_id)
        return self._succeeded(build_id, manifest)

    def close(self) -> None:
        """Queued builds are dropped; a running one finishes (or is cut short by the process ending:
        it then has no manifest and is built again next time)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- events

    def handle_event(self, event: events_pb2.Event) -> None:
        if payload_kind(event) != "dataset_prepared":
            return
        job_id = event.job_id
        marker = self.marker_key(job_id)
        if self.store.exists(marker):
            log.info("records already answered for this job; nothing to do", extra={"job_id": job_id})
            return
        dataset_id = event.dataset_prepared.dataset.dataset_id
        try:
            check_dataset_id(dataset_id, "dataset_prepared.dataset.dataset_id")
            with self.stage.working(job_id, f"building records of {dataset_id}") as work:
                future = self._submit(dataset_id, self.options())
                while not _wait(future, self.stage.check_seconds):
                    work.check()
                build = self._build_from_result(future.result())
                work.check()
            reply = new_event(job_id, self.producer, records_built=events_pb2.RecordsBuilt(
                dataset_id=dataset_id, records_uri=build.records_uri, train_examples=build.train_examples,
                val_examples=build.val_examples))
        except JobCancelled:
            reply = new_event(job_id, self.producer, job_cancelled=events_pb2.JobCancelled(
                stage=common_pb2.JOB_STAGE_RECORDS))
        except Unavailable:
            raise  # the store or broker is down: retried by the bus
        except ClassforgeError as exc:  # the user's data: no retry can fix it
            log.warning("cannot build records for the job", extra={"job_id": job_id, "dataset_id": dataset_id,
                                                                   "problem": exc.message})
            reply = new_event(job_id, self.producer, stage_failed=events_pb2.StageFailed(
                stage=common_pb2.JOB_STAGE_RECORDS, message=f"building records of dataset {dataset_id!r}: "
                                                            f"{exc.message}"))
        self.bus.publish(reply)
        self.store.put_bytes(marker, json.dumps({
            "job_id": job_id, "dataset_id": dataset_id, "answered_with": payload_kind(reply),
            "event_id": reply.event_id, "in_reply_to": event.event_id, "at": time.time()}).encode(),
            "application/json")

    @staticmethod
    def marker_key(job_id: str) -> str:
        name = job_id if _SAFE.fullmatch(job_id) else "~" + hashlib.sha256(job_id.encode()).hexdigest()
        return f"{STATE_PREFIX}{name}.json"

    # -- building

    def _submit(self, dataset_id: str, options: BuildOptions) -> Future:
        """The running build of this id, or a new one."""
        build_id = build_id_for(dataset_id, options)
        with self._lock:
            future = self._running.get(build_id)
            if future is None or future.done():
                self._builds[build_id] = Build(build_id=build_id, dataset_id=dataset_id,
                                               status=Status.BUILD_STATUS_RUNNING,
                                               records_uri=self.store.uri(records_prefix(build_id)))
                future = self._executor.submit(self._run, dataset_id, options)
                self._running[build_id] = future
        return future

    def _run(self, dataset_id: str, options: BuildOptions) -> BuildResult:
        build_id = build_id_for(dataset_id, options)
        started = time.monotonic()
        try:
            result = self.builder.build(self.store, dataset_id, options)
        except Exception as exc:
            metrics.BUILDS.labels("failed").inc()
            self._remove_incomplete(build_id)
            if isinstance(exc, ClassforgeError):
                error = exc.message
                log.warning("build failed", extra={"build_id": build_id, "problem": error})
            else:
                error = f"internal error: {type(exc).__name__}; see the tfrecords service log"
                log.exception("build failed", extra={"build_id": build_id})
            with self._lock:
                self._builds[build_id] = Build(build_id=build_id, dataset_id=dataset_id,
                                               status=Status.BUILD_STATUS_FAILED, error=error)
            raise
        if result.built:
            metrics.BUILDS.labels("built").inc()
            metrics.BUILD_DURATION.observe(time.monotonic() - started)
        else:
            metrics.BUILDS.labels("existing").inc()
        with self._lock:
            self._builds.pop(build_id, None)
        return result

    def _remove_incomplete(self, build_id: str) -> None:
        """Best effort after a failed build: shards without a manifest are never left behind (when the
        store is down this fails too, and the next build of the id overwrites and prunes them)."""
        prefix = records_prefix(build_id)
        try:
            if read_manifest(self.store, prefix) is None:
                self.store.delete_prefix(prefix)
        except Exception:  # noqa: BLE001 - the build's own error is the one to report
            log.warning("could not remove an incomplete build", extra={"build_id": build_id}, exc_info=True)

    def _build_from_result(self, result: BuildResult) -> Build:
        return self._succeeded(result.build_id, result.manifest)

    def _succeeded(self, build_id: str, manifest: dict) -> Build:
        splits = manifest["splits"]
        return Build(build_id=build_id, dataset_id=manifest["dataset_id"], status=Status.BUILD_STATUS_SUCCEEDED,
                     records_uri=self.store.uri(records_prefix(build_id)),
                     train_examples=splits["train"]["examples"], val_examples=splits["val"]["examples"],
                     shard_count=sum(len(s["shards"]) for s in splits.values()))


def _wait(future: Future, seconds: float) -> bool:
    """True once the future is done (its result or error is then ready), after at most `seconds`."""
    try:
        future.exception(timeout=seconds)
    except TimeoutError:
        return False
    return True
