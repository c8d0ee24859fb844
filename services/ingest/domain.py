"""Ingest: datasets from uploads, object-store prefixes and local folders; the job_submitted handler.
No gRPC and no Kafka here: the servicer calls this class and the event bus feeds `handle`.

Idempotency:
- a dataset is complete once `datasets/<id>/manifest.json` exists (written last); a build that finds a
  prefix without manifest (a crashed build) deletes the leftovers and starts over;
- CreateDataset with a request_id uses the dataset id `ds-<uuid5(request_id)>`: a retried call returns
  the dataset already made, and the same request_id with another source or options is refused;
- a job's dataset id is `ds-<job id>`; after handling a job_submitted the outcome is recorded under
  `state/ingest/jobs/<job id>.json`, so a redelivered job_submitted (even with a new event id)
  publishes nothing twice and never builds a second dataset. Only a crash between publishing and
  recording can publish an outcome again (at-least-once).

User-data problems in a job (bad options, a missing source or dataset, an empty dataset, a label
without images) publish stage_failed(JOB_STAGE_INGEST) and return normally; anything else raises so
the bus retries and finally dead-letters the event (which the jobs service turns into stage_failed).
While it works on a job, ingest sends heartbeats; a cancelled job is acknowledged with job_cancelled
instead of dataset_prepared. A build that fails leaves no objects behind (no half-written dataset).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path

from classforge.v1 import common_pb2, events_pb2
from classforge.v1 import ingest_service_pb2 as pb
from services.common import artefacts
from services.common.dataset_options import IngestOptions
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from services.common.events import EventBus, new_event, payload_kind
from services.common.stage_work import JobCancelled, Stage, StageWork
from services.common.storage import ObjectNotFound, ObjectStore
from services.ingest import metrics
from services.ingest.confine import LocalRoots
from services.ingest.options import DEFAULT_LIMITS, SourceLimits
from services.ingest.prepare import prepare_dataset, read_json
from services.ingest.relabel import is_version_of, plan_relabel, write_version
from services.ingest.report import to_proto
from services.ingest.sources import archive_root, download_prefix, extract_archive, open_local_source
from services.ingest.validation import Reject

log = logging.getLogger("classforge.ingest")

DATASETS_PREFIX = artefacts.DATASETS_PREFIX
INDEX_PREFIX = "state/ingest/datasets/"
JOBS_PREFIX = "state/ingest/jobs/"
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,119}")
_REQUEST_NAMESPACE = uuid.UUID("0b7d6c52-3f0e-4c1a-9e57-2a6f3c9d1e44")
_ARCHIVE_FORMATS = {pb.ARCHIVE_FORMAT_ZIP: "zip", pb.ARCHIVE_FORMAT_TAR: "tar", pb.ARCHIVE_FORMAT_TAR_GZ: "tar.gz"}
_USER_ERRORS = (InvalidArgument, NotFound, FailedPrecondition, ResourceExhausted, PermissionDenied)
_INDEX_CLOCK = 10**13  # index keys sort newest first: (10^13 - created ms)


def check_relative(field: str, value: str) -> None:
    if value.startswith("/") or ".." in value.split("/") or "\\" in value or "\x00" in value:
        raise InvalidArgument(field, f"must be a relative path without '..', got {value!r}")


def check_dataset_id(dataset_id: str, field: str = "dataset_id") -> str:
    if not dataset_id:
        raise InvalidArgument(field, "is required")
    if not _SAFE_ID.fullmatch(dataset_id):
        raise InvalidArgument(field, f"{dataset_id!r} is not a dataset id (letters, digits, '.', '_', '-')")
    return dataset_id


class IngestDomain:
    def __init__(self, store: ObjectStore, bus: EventBus | None = None, *, producer: str = "ingest",
                 limits: SourceLimits = DEFAULT_LIMITS, workers: int | None = None, work_dir: str | None = None,
                 local_roots: Iterable[str | Path] = (), heartbeat_seconds: float = 30.0):
        self.store = store
        self.bus = bus
        self.producer = producer
        self.stage = Stage(bus, store, common_pb2.JOB_STAGE_INGEST, producer,
                           heartbeat_seconds=heartbeat_seconds) if bus is not None else None
        self.limits = limits
        self.workers = workers
        self.work_dir = work_dir or None
        # The folders a local_path source may name; none (the default) refuses every local path.
        self.local_roots = LocalRoots(local_roots)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # ------------------------------------------------------------------ ids and reads

    @staticmethod
    def dataset_id_for_job(job_id: str) -> str:
        name = job_id if _SAFE_ID.fullmatch(job_id) and len(job_id) <= 100 else hashlib.sha256(
            job_id.encode()).hexdigest()[:32]
        return f"ds-{name}"

    @classmethod
    def job_marker_key(cls, job_id: str) -> str:
        """Ingest's record of a handled job: {"job_id", "outcome", "dataset_id" when prepared}."""
        return f"{JOBS_PREFIX}{cls.dataset_id_for_job(job_id)[3:]}.json"

    @staticmethod
    def dataset_id_for_request(request_id: str) -> str:
        return f"ds-{uuid.uuid5(_REQUEST_NAMESPACE, request_id) if request_id else uuid.uuid4()}"

    def uri(self, dataset_id: str) -> str:
        """Where the dataset lives: the prefix `datasets/<id>` as a URI of the store (no trailing '/')."""
        return self.store.uri(f"{DATASETS_PREFIX}{dataset_id}")

    def manifest(self, dataset_id: str, field: str = "dataset_id") -> dict:
        check_dataset_id(dataset_id, field)
        try:
            return read_json(self.store, f"{DATASETS_PREFIX}{dataset_id}/manifest.json")
        except ObjectNotFound:
            raise NotFound("dataset", dataset_id) from None

    def _manifest_or_none(self, dataset_id: str) -> dict | None:
        try:
            return self.manifest(dataset_id)
        except NotFound:
            return None

    def get(self, dataset_id: str, field: str = "dataset_id") -> pb.Dataset:
        return self._dataset(self.manifest(dataset_id, field))

    def report(self, dataset_id: str) -> tuple[pb.DatasetReport, str]:
        self.manifest(dataset_id)  # NotFound for an unknown or incomplete dataset
        prefix = f"{DATASETS_PREFIX}{dataset_id}/"
        report = read_json(self.store, prefix + "report.json")
        return to_proto(report), self.store.get_bytes(prefix + "report.md").decode("utf-8")

    def list(self, page_size: int = 50, page_token: str = "") -> tuple[list[pb.Dataset], str]:
        """Newest first; page_token is the offset of the next page."""
        if page_size < 0:
            raise InvalidArgument("page_size", f"must not be negative, got {page_size}")
        try:
            offset = int(page_token or 0)
            if offset < 0:
                raise ValueError(page_token)
        except ValueError:
            raise InvalidArgument("page_token", f"{page_token!r} is not a token this service issued") from None
        page_size = min(page_size or 50, 500)
        keys = [info.key for info in self.store.list(INDEX_PREFIX)]
        datasets = []
        for key in keys[offset:offset + page_size]:
            try:
                datasets.append(self._dataset(read_json(self.store, key)))
            except ObjectNotFound:  # removed meanwhile
                continue
        token = str(offset + page_size) if offset + page_size < len(keys) else ""
        return datasets, token

    def _dataset(self, manifest: dict) -> pb.Dataset:
        counts = manifest["counts"]
        ref = common_pb2.DatasetRef(dataset_id=manifest["dataset_id"], uri=self.uri(manifest["dataset_id"]),
                                    tasks=[t["name"] for t in manifest["tasks"]])
        return pb.Dataset(ref=ref, image_count=counts["images"], train_count=counts["train"], val_count=counts["val"],
                          test_count=counts["test"], rejected_count=counts["rejected"])

    def _index(self, manifest: dict) -> None:
        created = datetime.fromisoformat(manifest["created_at"].replace("Z", "+00:00"))
        stamp = _INDEX_CLOCK - int(created.timestamp() * 1000)
        entry = {k: manifest[k] for k in ("dataset_id", "created_at", "tasks", "counts", "source")}
        self.store.put_bytes(f"{INDEX_PREFIX}{stamp:013d}-{manifest['dataset_id']}.json",
                             json.dumps(entry).encode(), "application/json")

    # ------------------------------------------------------------------ CreateDataset

    def create(self, header: pb.CreateDatasetHeader, chunks: Iterable[bytes]) -> pb.Dataset:
        """An uploaded archive (header.archive_format, then chunks) or a named source (header.source)."""
        options = IngestOptions.from_proto(header.options, "header.options")
        source = header.source
        kind = source.WhichOneof("source")
        if header.archive_format and kind:
            raise InvalidArgument("header.source", f"set either archive_format (and stream the archive) or "
                                                   f"source.{kind}, not both")
        if not header.archive_format and not kind:
            raise InvalidArgument("header.archive_format", "set archive_format and stream the archive in chunks "
                                                           "after the header, or name a source (object_prefix, "
                                                           "dataset_id or local_path)")
        if source.list_file:
            check_relative("header.source.list_file", source.list_file)
        if header.request_id and len(header.request_id) > 200:
            raise InvalidArgument("header.request_id", "must be at most 200 characters")
        if kind:
            _expect_no_chunks(chunks)
            if kind == "dataset_id":
                return self.get(source.dataset_id, "header.source.dataset_id")
            return self._from_source(self.dataset_id_for_request(header.request_id), source, options,
                                     "header.source", "header.request_id" if header.request_id else "")
        fmt = _ARCHIVE_FORMATS.get(header.archive_format)
        if fmt is None:
            raise InvalidArgument("header.archive_format", f"unknown value {header.archive_format}")
        dataset_id = self.dataset_id_for_request(header.request_id)
        with self._workspace() as work:
            upload = work / "upload"
            size, sha = self._spool(chunks, upload)
            extracted = extract_archive(upload, fmt, work / "files", self.limits, "header.archive_format")
            upload.unlink()  # the extracted files are all that is needed now
            description = {"kind": "upload", "content_sha256": extracted.digest, "archive_format": fmt,
                           "archive_bytes": size, "archive_sha256": sha}
            if source.list_file:
                description["list_file"] = source.list_file
            with self._lock(dataset_id):
                existing = self._reuse(dataset_id, description, options,
                                       "header.request_id" if header.request_id else "")
                if existing is not None:
                    return existing
                return self._build(dataset_id, archive_root(work / "files", source.list_file), options,
                                   description, source.list_file,
                                   "header.source.list_file", extracted.rejected)

    def _spool(self, chunks: Iterable[bytes], path: Path) -> tuple[int, str]:
        sha, size = hashlib.sha256(), 0
        with open(path, "wb") as out:
            for chunk in chunks:
                size += len(chunk)
                if size > self.limits.max_upload_bytes:
                    raise ResourceExhausted(f"the upload is larger than the limit of {self.limits.max_upload_bytes} "
                                            f"bytes (CLASSFORGE_INGEST_MAX_UPLOAD_BYTES); put the images in the "
                                            f"object store and name the prefix instead")
                sha.update(chunk)
                out.write(chunk)
        if not size:
            raise InvalidArgument("chunk", "the header announced an archive but no archive bytes followed it")
        return size, sha.hexdigest()

    # ------------------------------------------------------------------ RelabelDataset

    def relabel(self, dataset_id: str, corrections: bytes, new_dataset_id: str = "") -> tuple[pb.Dataset, dict]:
        """A new version of `dataset_id` from a reviewed mislabels.csv (relabel.py); the same parent and
        corrections return the version already made. Returns the dataset and its manifest."""
        self.manifest(dataset_id)  # NotFound for an unknown or incomplete parent
        if new_dataset_id:
            check_dataset_id(new_dataset_id, "new_dataset_id")
        try:
            text = corrections.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InvalidArgument("corrections", f"is not UTF-8 text (byte {exc.start}); save the CSV as UTF-8"
                                  ) from None
        if not text.strip():
            raise InvalidArgument("corrections", "is empty: send mislabels.csv with its decision column filled in")
        plan = plan_relabel(self.store, f"{DATASETS_PREFIX}{dataset_id}/", text, origin="RelabelDataset")
        new_id = new_dataset_id or plan.default_id
        with self._lock(new_id):
            existing = self._manifest_or_none(new_id)
            if existing is not None:
                if not is_version_of(existing, dataset_id, plan):
                    raise InvalidArgument("new_dataset_id", f"dataset {new_id!r} already exists and is not this "
                                                            f"relabel of {dataset_id!r}; choose another id")
                self._index(existing)
                return self._dataset(existing), existing
            prefix = f"{DATASETS_PREFIX}{new_id}/"
            self.store.delete_prefix(prefix)  # leftovers of an interrupted relabel: no manifest there
            prepared = write_version(plan, self.store, prefix, new_id)
        self._index(prepared.manifest)
        log.info("dataset relabeled", extra={"dataset_id": new_id, "parent": dataset_id,
                                             "relabeled": prepared.manifest["corrections"]["relabeled"],
                                             "dropped": prepared.manifest["corrections"]["dropped"]})
        return self._dataset(prepared.manifest), prepared.manifest

    # ------------------------------------------------------------------ events

    def handle(self, event: events_pb2.Event) -> None:
        """job_submitted -> dataset_prepared (or stage_failed, or job_cancelled), once per job."""
        if payload_kind(event) != "job_submitted":
            return
        job_id = event.job_id
        marker = self.job_marker_key(job_id)
        if self.store.exists(marker):
            log.info("job already handled; nothing to do", extra={"job_id": job_id, "event_id": event.event_id})
            return
        try:
            with self.stage.working(job_id, "preparing the dataset") as work:
                dataset = self._for_job(job_id, event.job_submitted.spec, work)
            if self.stage.is_cancelled(job_id):  # cancelled while the last images were written
                raise JobCancelled(job_id, "cancelled")
        except JobCancelled:
            self.stage.acknowledge_cancel(job_id)
            self._record(marker, {"job_id": job_id, "outcome": "cancelled"})
            return
        except _USER_ERRORS as exc:
            log.warning("cannot prepare the job's dataset", extra={"job_id": job_id, "problem": exc.message})
            self.stage.fail(job_id, f"ingest: {exc.message}")
            self._record(marker, {"job_id": job_id, "outcome": "failed", "message": exc.message})
            return
        self._publish(new_event(job_id, self.producer, dataset_prepared=events_pb2.DatasetPrepared(
            dataset=dataset.ref, train_count=dataset.train_count, val_count=dataset.val_count,
            test_count=dataset.test_count, rejected_count=dataset.rejected_count)))
        self._record(marker, {"job_id": job_id, "outcome": "prepared", "dataset_id": dataset.ref.dataset_id})
        log.info("dataset prepared for job", extra={"job_id": job_id, "dataset_id": dataset.ref.dataset_id})

    def _for_job(self, job_id: str, spec: common_pb2.JobSpec, work: StageWork) -> pb.Dataset:
        source = spec.source
        kind = source.WhichOneof("source")
        if kind is None:
            raise InvalidArgument("spec.source", "names no data: set object_prefix, dataset_id or local_path")
        if source.list_file:
            check_relative("spec.source.list_file", source.list_file)
        if kind == "dataset_id":
            dataset = self.get(source.dataset_id, "spec.source.dataset_id")
            metrics.DATASETS.labels("reused").inc()
            return dataset
        options = IngestOptions.from_proto(spec.dataset, "spec.dataset")
        return self._from_source(self.dataset_id_for_job(job_id), source, options, "spec.source", "", work)

    def _publish(self, event: events_pb2.Event) -> None:
        if self.bus is None:
            raise RuntimeError("this IngestDomain has no event bus")
        self.bus.publish(event)

    def _record(self, key: str, outcome: dict) -> None:
        self.store.put_bytes(key, json.dumps(outcome).encode(), "application/json")

    # ------------------------------------------------------------------ building

    def _from_source(self, dataset_id: str, source: common_pb2.DataSource, options: IngestOptions, field: str,
                     reuse_field: str, work: StageWork | None = None) -> pb.Dataset:
        kind = source.WhichOneof("source")
        value = getattr(source, kind)
        if not value.strip():
            raise InvalidArgument(f"{field}.{kind}", "must not be empty")
        description = {"kind": kind, ("path" if kind == "local_path" else "prefix"): value}
        if source.list_file:
            description["list_file"] = source.list_file
        with self._lock(dataset_id):
            existing = self._reuse(dataset_id, description, options, reuse_field)
            if existing is not None:
                return existing
            if kind == "local_path":
                path = self._local_path(value, f"{field}.local_path")
                with self._workspace() as scratch:  # where an archive is extracted
                    local = open_local_source(path, source.list_file, scratch, limits=self.limits,
                                              field_name=f"{field}.local_path", list_file_field=f"{field}.list_file",
                                              roots=self.local_roots)
                    return self._build(dataset_id, local.root, options, description, local.list_file,
                                       f"{field}.list_file", local.rejected, work, local.roots)
            check_relative(f"{field}.object_prefix", value)
            prefix = value if value.endswith("/") else value + "/"
            if next(iter(self.store.list(prefix)), None) is None:
                raise NotFound("object prefix", prefix)
            with self._workspace() as scratch:
                rejects = download_prefix(self.store, prefix, scratch / "files", self.limits)
                return self._build(dataset_id, scratch / "files", options, description, source.list_file,
                                   f"{field}.list_file", rejects, work)

    def _local_path(self, value: str, field: str) -> Path:
        """A folder, list file or archive on this service's file system, inside the allowed roots (its
        real path, links resolved). PermissionDenied when local paths are disabled or it lies outside."""
        return self.local_roots.resolve(value, field)

    def _reuse(self, dataset_id: str, description: dict, options: IngestOptions, field: str) -> pb.Dataset | None:
        """The dataset already made under this id (a retry or a redelivery), or None. With `field` set
        (a client-chosen request_id), a different source or options is an error rather than a reuse."""
        manifest = self._manifest_or_none(dataset_id)
        if manifest is None:
            return None
        if field and (_identity(manifest["source"]) != _identity(description)
                      or manifest["options"] != options.as_dict()):
            raise InvalidArgument(field, f"was already used for dataset {dataset_id!r} made from another source "
                                         f"or with other options; use a new request_id")
        self._index(manifest)  # a crash may have come between the manifest and the index entry
        metrics.DATASETS.labels("reused").inc()
        return self._dataset(manifest)

    def _build(self, dataset_id: str, root: Path, options: IngestOptions, description: dict, list_file: str,
               list_field: str, rejects: list[Reject], work: StageWork | None = None,
               roots: LocalRoots | None = None) -> pb.Dataset:
        prefix = f"{DATASETS_PREFIX}{dataset_id}/"
        removed = self.store.delete_prefix(prefix)  # leftovers of an interrupted build: no manifest there
        if removed:
            log.warning("removed an incomplete dataset before rebuilding it",
                        extra={"dataset_id": dataset_id, "objects": removed})
        try:
            prepared = prepare_dataset(root, self.store, prefix, options, dataset_id=dataset_id,
                                       source=description, list_file=list_file, list_file_field=list_field,
                                       extra_rejects=rejects, workers=self.workers,
                                       max_file_bytes=self.limits.max_file_bytes,
                                       stop_check=work.check if work else _no_stop,
                                       progress=work.progress if work else None, roots=roots)
        except BaseException:
            self._remove_incomplete(prefix)
            raise
        self._index(prepared.manifest)
        log.info("dataset prepared", extra={"dataset_id": dataset_id, **prepared.counts,
                                            "seconds": prepared.manifest["duration_seconds"]})
        return self._dataset(prepared.manifest)

    def _remove_incomplete(self, prefix: str) -> None:
        """Best effort after a failed build: no half-written dataset is left for anyone to find.
        (When the store itself is down this fails too; the next build of the id removes the rest.)"""
        try:
            removed = self.store.delete_prefix(prefix)
        except Exception:  # noqa: BLE001 - the build's own error is the one to report
            log.warning("could not remove an incomplete dataset", extra={"prefix": prefix}, exc_info=True)
            return
        if removed:
            log.info("removed an incomplete dataset", extra={"prefix": prefix, "objects": removed})

    @contextlib.contextmanager
    def _lock(self, dataset_id: str) -> Iterator[None]:
        """One build per dataset id at a time in this process (a retried call racing the first)."""
        with self._locks_guard:
            lock = self._locks.setdefault(dataset_id, threading.Lock())
        with lock:
            yield

    @contextlib.contextmanager
    def _workspace(self) -> Iterator[Path]:
        if self.work_dir:  # a configured scratch folder may not exist yet (a fresh embedded run's out/work)
            Path(self.work_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.work_dir, prefix="classforge-ingest-") as path:
            yield Path(path)


def _no_stop() -> None:
    """A dataset made outside a job (CreateDataset) has no cancel to poll."""


def _identity(description: dict) -> dict:
    """What makes two sources the same data: an upload is its extracted content, whatever the archive
    bytes (a re-packed archive of the same files is the same upload)."""
    return {k: v for k, v in description.items() if not k.startswith("archive_")}


def _expect_no_chunks(chunks: Iterable[bytes]) -> None:
    for _ in chunks:
        raise InvalidArgument("chunk", "header.source names the data, so no archive chunks may follow the header")
