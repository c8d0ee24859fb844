"""Job lifecycle: submit, fold events into job state, cancel. No gRPC and no Kafka here:
the servicer calls this class, and the event bus feeds `apply`.

Job state is the fold of the job's events. The state and every event of a job are saved to
the object store (state/jobs/<id>/job.pb and state/jobs/<id>/events/…), so a restarted jobs
service (or a second replica) answers the same, WatchJob included.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator

from google.protobuf.timestamp_pb2 import Timestamp

from classforge.v1 import common_pb2, events_pb2, jobs_service_pb2
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.events import EventBus, new_event, payload_kind
from services.common.storage import ObjectStore
from services.jobs.spec_validation import validate_job_spec

log = logging.getLogger("classforge.jobs")

Job = jobs_service_pb2.Job
Stage = common_pb2.JobStage
Status = common_pb2.JobStatus
TERMINAL = {Status.JOB_STATUS_SUCCEEDED, Status.JOB_STATUS_FAILED, Status.JOB_STATUS_CANCELLED}
STATE_PREFIX = "state/jobs/"
# Fixed namespace so a client's request_id always maps to the same job id (idempotent submit).
_REQUEST_NAMESPACE = uuid.UUID("6f1c1e0e-55a4-4d8e-9a0e-6c1f0b7a2c11")


class JobsDomain:
    def __init__(self, bus: EventBus, store: ObjectStore, producer: str = "jobs"):
        self.bus = bus
        self.store = store
        self.producer = producer
        self._lock = threading.Condition()  # notified on every change, for watchers
        self._jobs: dict[str, Job] = {}
        self._events: dict[str, list[events_pb2.Event]] = {}

    def load(self) -> int:
        """Reads persisted job state and event history; returns how many jobs were restored."""
        with self._lock:
            for info in self.store.list(STATE_PREFIX):
                if info.key.endswith("/job.pb"):
                    job = Job.FromString(self.store.get_bytes(info.key))
                    self._jobs[job.job_id] = job
                elif "/events/" in info.key:  # keys sort by time: <prefix>/events/<ns>-<event id>.pb
                    event = events_pb2.Event.FromString(self.store.get_bytes(info.key))
                    self._events.setdefault(event.job_id, []).append(event)
            return len(self._jobs)

    def submit(self, spec: common_pb2.JobSpec, request_id: str = "") -> Job:
        validate_job_spec(spec)
        job_id = str(uuid.uuid5(_REQUEST_NAMESPACE, request_id)) if request_id else str(uuid.uuid4())
        with self._lock:
            existing = self._jobs.get(job_id)
        if existing is not None:
            if existing.spec != spec:
                raise InvalidArgument("request_id", f"{request_id!r} was already used for a different job spec")
            return existing
        job = Job(job_id=job_id, spec=spec, stage=Stage.JOB_STAGE_INGEST, status=Status.JOB_STATUS_PENDING)
        now = Timestamp()
        now.GetCurrentTime()
        job.created_at.CopyFrom(now)
        job.updated_at.CopyFrom(now)
        self._save(job)
        # Published after saving: if publishing fails the client retries with the same request_id.
        self.bus.publish(new_event(job_id, self.producer, job_submitted=events_pb2.JobSubmitted(spec=spec)))
        log.info("job submitted", extra={"job_id": job_id})
        return job

    def get(self, job_id: str) -> Job:
        if not job_id:
            raise InvalidArgument("job_id", "is required")
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound("job", job_id)
        return job

    def list(self, status: int = 0, page_size: int = 50, page_token: str = "") -> tuple[list[Job], str]:
        """Newest first; page_token is the offset of the next page."""
        if page_size < 0:
            raise InvalidArgument("page_size", "must not be negative")
        try:
            offset = int(page_token or 0)
        except ValueError:
            raise InvalidArgument("page_token", f"{page_token!r} is not a token this service issued") from None
        page_size = min(page_size or 50, 500)
        with self._lock:
            jobs = [j for j in self._jobs.values() if not status or j.status == status]
        jobs.sort(key=lambda j: (j.created_at.seconds, j.created_at.nanos, j.job_id), reverse=True)
        page = jobs[offset:offset + page_size]
        next_token = str(offset + page_size) if offset + page_size < len(jobs) else ""
        return page, next_token

    def cancel(self, job_id: str, reason: str = "") -> Job:
        job = self.get(job_id)
        if job.status in TERMINAL:
            raise FailedPrecondition(
                f"job {job_id!r} already ended as {Status.Name(job.status)}; only running jobs can be cancelled")
        self.bus.publish(new_event(job_id, self.producer,
                                   cancel_requested=events_pb2.CancelRequested(reason=reason or "cancelled by user")))
        return job

    def watch(self, job_id: str, is_active: Callable[[], bool], poll_seconds: float = 1.0
              ) -> Iterator[tuple[events_pb2.Event, Job]]:
        """The job's events from the start, then live ones until the job ends or is_active() turns
        false (the client went away); each comes with the job's state as of sending."""
        self.get(job_id)
        sent = 0
        while True:
            with self._lock:
                history = self._events.get(job_id, [])
                while sent >= len(history) and is_active():
                    if self._jobs[job_id].status in TERMINAL:
                        return
                    self._lock.wait(poll_seconds)
                    history = self._events.get(job_id, [])
                if not is_active():
                    return
                pending, job = history[sent:], self._jobs[job_id]
            for event in pending:
                yield event, job
            sent += len(pending)

    def apply(self, event: events_pb2.Event) -> None:
        """Folds one event into its job's state. Idempotent: applying an event twice changes nothing more."""
        with self._lock:
            job = self._jobs.get(event.job_id)
            known = any(e.event_id == event.event_id for e in self._events.get(event.job_id, []))
        kind = payload_kind(event)
        if known:
            return
        if job is None:
            if kind != "job_submitted":
                log.warning("event for an unknown job", extra={"job_id": event.job_id, "kind": kind})
                return
            job = Job(job_id=event.job_id, spec=event.job_submitted.spec,
                      stage=Stage.JOB_STAGE_INGEST, status=Status.JOB_STATUS_PENDING)
            job.created_at.CopyFrom(event.occurred_at)
        else:
            job = Job.FromString(job.SerializeToString())  # fold on a copy; readers see whole states only
        # Our own submit already recorded the job; late events (progress after a cancel) must not
        # revive a finished one. Both still belong to the job's history.
        if kind != "job_submitted" and job.status not in TERMINAL:
            _fold(job, event, kind)
            job.updated_at.CopyFrom(event.occurred_at)
        when = event.occurred_at.seconds * 1_000_000_000 + event.occurred_at.nanos
        self.store.put_bytes(f"{STATE_PREFIX}{event.job_id}/events/{when:020d}-{event.event_id}.pb",
                             event.SerializeToString())
        self._save(job, event)

    def _save(self, job: Job, event: events_pb2.Event | None = None) -> None:
        self.store.put_bytes(f"{STATE_PREFIX}{job.job_id}/job.pb", job.SerializeToString())
        with self._lock:  # the event and the state it led to become visible together, for watchers
            if event is not None:
                self._events.setdefault(event.job_id, []).append(event)
            self._jobs[job.job_id] = job
            self._lock.notify_all()


def _fold(job: Job, event: events_pb2.Event, kind: str) -> None:
    running = Status.JOB_STATUS_RUNNING
    if kind == "dataset_prepared":
        job.stage, job.status = Stage.JOB_STAGE_RECORDS, running
        job.dataset.CopyFrom(event.dataset_prepared.dataset)
    elif kind == "records_built":
        job.stage, job.status = Stage.JOB_STAGE_TRAINING, running
        job.records_uri = event.records_built.records_uri
    elif kind == "training_progress":
        job.stage, job.status = Stage.JOB_STAGE_TRAINING, running
        job.progress.CopyFrom(event.training_progress)
    elif kind == "training_completed":
        job.stage, job.status = Stage.JOB_STAGE_EVALUATION, running
        job.model.CopyFrom(event.training_completed.model)
    elif kind == "evaluation_completed":
        done = event.evaluation_completed
        job.report_uri, job.blessed = done.report_uri, done.blessed
        if done.blessed and job.spec.deploy.deploy:
            job.stage = Stage.JOB_STAGE_DEPLOYMENT
        else:
            job.status = Status.JOB_STATUS_SUCCEEDED
    elif kind == "model_deployed":
        job.model.CopyFrom(event.model_deployed.model)
        job.status = Status.JOB_STATUS_SUCCEEDED
    elif kind == "stage_failed":
        job.status, job.error = Status.JOB_STATUS_FAILED, event.stage_failed.message
        if event.stage_failed.stage:
            job.stage = event.stage_failed.stage
    elif kind == "job_cancelled":
        job.status = Status.JOB_STATUS_CANCELLED
