"""Job lifecycle: submit, fold events into job state, cancel, and make sure every job ends.
No gRPC and no Kafka here: the servicer calls this class, and the event bus feeds `apply` and
`apply_dead_letter`.

Job state is the fold of the job's events. The state and every event of a job are saved to
the object store (state/jobs/<id>/job.pb and state/jobs/<id>/events/…), so a restarted jobs
service (or a second replica) answers the same, WatchJob included. Heartbeats only move the job's
`last_activity_at` and `activity`; they are not kept in its history (a watcher may ask for the latest
one live, for progress).

Every job ends (SUCCEEDED, FAILED with the stage and a reason, or CANCELLED):
- a dead-lettered event becomes `stage_failed` for the stage whose consumer group gave up;
- `check_deadlines` fails a job whose active stage has said nothing (no event, no heartbeat) for
  `stage_deadline_s`, and ends a cancelled job whose stage did not confirm within `cancel_grace_s`;
- a cancel writes the marker every stage polls (services.common.stage_work), then publishes
  `cancel_requested`; the job ends CANCELLED at the first `job_cancelled`. Once a job has ended,
  later events are recorded but change nothing: a cancelled job never turns SUCCEEDED.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator

from google.protobuf.timestamp_pb2 import Timestamp

from classforge.v1 import common_pb2, events_pb2, jobs_service_pb2
from services.common.auth import Identity, Role
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, RetryLater
from services.common.events import DeadLetter, EventBus, new_event, payload_kind
from services.common.stage_work import Cancellations
from services.common.storage import ObjectStore
from services.common.training_options import DEFAULT_MAX_WORKERS
from services.jobs.spec_validation import validate_job_spec

log = logging.getLogger("classforge.jobs")

Job = jobs_service_pb2.Job
Stage = common_pb2.JobStage
Status = common_pb2.JobStatus
TERMINAL = {Status.JOB_STATUS_SUCCEEDED, Status.JOB_STATUS_FAILED, Status.JOB_STATUS_CANCELLED}
STATE_PREFIX = "state/jobs/"
# Fixed namespace so a client's request_id always maps to the same job id (idempotent submit).
_REQUEST_NAMESPACE = uuid.UUID("6f1c1e0e-55a4-4d8e-9a0e-6c1f0b7a2c11")
# The stage each service's consumer group works on: a dead letter of that group fails that stage.
STAGE_OF_GROUP = {"ingest": Stage.JOB_STAGE_INGEST, "tfrecords": Stage.JOB_STAGE_RECORDS,
                  "trainer": Stage.JOB_STAGE_TRAINING, "evaluator": Stage.JOB_STAGE_EVALUATION,
                  "inference": Stage.JOB_STAGE_DEPLOYMENT}
# The service a person should look at when a stage goes silent.
SERVICE_OF_STAGE = {stage: group for group, stage in STAGE_OF_GROUP.items()}


def stage_name(stage: int) -> str:
    return Stage.Name(stage).removeprefix("JOB_STAGE_").lower() if stage else "unknown"


def _seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


class JobsDomain:
    def __init__(self, bus: EventBus, store: ObjectStore, producer: str = "jobs", *,
                 stage_deadline_s: float = 600.0, cancel_grace_s: float = 120.0,
                 clock: Callable[[], float] = time.time, max_workers: int = DEFAULT_MAX_WORKERS):
        self.max_workers = max_workers  # TrainingConfig.workers above this is INVALID_ARGUMENT at submit
        self.bus = bus
        self.store = store
        self.producer = producer
        self.cancellations = Cancellations(store)
        self.stage_deadline_s, self.cancel_grace_s = stage_deadline_s, cancel_grace_s
        self.clock = clock
        self._lock = threading.Condition()  # notified on every change, for watchers
        self._jobs: dict[str, Job] = {}
        self._events: dict[str, list[events_pb2.Event]] = {}
        # The latest heartbeat of each job, for watchers that want live progress (not history, not saved).
        self._beats: dict[str, events_pb2.Event] = {}
        # Deadlines run from when this service could last see and record events: a jobs service that
        # was down, or cut off from Kafka or the object store, gives every stage a fresh deadline
        # instead of failing jobs for a silence that was its own.
        self._watching_since = clock()
        self._blind = False
        # When each stage last sent a heartbeat, for any job: a stage that is alive but busy with
        # other jobs (its consumer handles one event at a time) holds the jobs queued behind it.
        self._stage_heard: dict[int, float] = {}
        # When each stage last sent a heartbeat, for any job: a stage that is alive but busy with
        # other jobs (its consumer handles one event at a time) holds the jobs queued behind it.
        self._stage_heard: dict[int, float] = {}
        self._ended_by_watchdog: set[str] = set()  # published for, waiting for the fold

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

    def submit(self, spec: common_pb2.JobSpec, request_id: str = "", owner: str = "") -> Job:
        """`owner`: the submitter's authenticated subject, recorded on the job ("" without authentication)."""
        validate_job_spec(spec, max_workers=self.max_workers)
        # Each owner has its own request ids: one user's request_id never returns another user's job.
        job_id = str(uuid.uuid5(_REQUEST_NAMESPACE, f"{owner}\0{request_id}" if owner else request_id)) \
            if request_id else str(uuid.uuid4())
        with self._lock:
            existing = self._jobs.get(job_id)
        if existing is not None:
            if existing.spec != spec:
                raise InvalidArgument("request_id", f"{request_id!r} was already used for a different job spec")
            return existing
        job = Job(job_id=job_id, spec=spec, stage=Stage.JOB_STAGE_INGEST, status=Status.JOB_STATUS_PENDING,
                  owner=owner)
        now = Timestamp()
        now.GetCurrentTime()
        job.created_at.CopyFrom(now)
        job.updated_at.CopyFrom(now)
        self._save(job)
        # Published after saving: if publishing fails the client retries with the same request_id.
        submitted = events_pb2.JobSubmitted(spec=spec, owner=owner)
        self._publish_for_client(new_event(job_id, self.producer, job_submitted=submitted),
                                 "submit it again with the same request_id")
        log.info("job submitted", extra={"job_id": job_id})
        return job

    def _publish_for_client(self, event: events_pb2.Event, retry_hint: str) -> None:
        """Publishes on behalf of a gRPC caller. The caller learns that it may retry, but not broker
        addresses or library internals: those go to the log."""
        try:
            self.bus.publish(event)
        except Exception as exc:
            log.error("could not publish %s", payload_kind(event), extra={"job_id": event.job_id},
                      exc_info=True)
            raise RetryLater(f"the job's event could not be recorded right now; {retry_hint}") from exc

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

    def cancel(self, job_id: str, reason: str = "", caller: Identity | None = None) -> Job:
        """Asks the job's stage to stop. Harmless to repeat: a job already cancelled, or with a cancel
        under way, is returned as it is. `caller` (None without authentication: anyone may cancel) must own
        the job or be an admin."""
        job = self.get(job_id)
        if caller is not None and not caller.may(Role.ADMIN) and job.owner != caller.subject:
            whose = f"it belongs to {job.owner!r}" if job.owner else "it was submitted without authentication"
            raise PermissionDenied(f"job {job_id!r} is not {caller.subject!r}'s ({whose}); "
                                   f"only its owner or an admin may cancel it")
        if job.status == Status.JOB_STATUS_CANCELLED or (job.status not in TERMINAL and job.cancel_reason):
            return job
        if job.status in TERMINAL:
            raise FailedPrecondition(
                f"job {job_id!r} already ended as {Status.Name(job.status)}; only running jobs can be cancelled")
        reason = (reason or "cancelled by user")[:1000]
        # The marker first: a stage busy inside a handler polls it; the event reaches the others.
        self.cancellations.request(job_id, reason)
        self._publish_for_client(new_event(job_id, self.producer, cancel_requested=events_pb2.CancelRequested(
            reason=reason)), "cancel it again")
        return job

    def watch(self, job_id: str, is_active: Callable[[], bool], poll_seconds: float = 1.0,
              heartbeats: bool = False) -> Iterator[tuple[events_pb2.Event, Job]]:
        """The job's events from the start, then live ones until the job ends or is_active() turns
        false (the client went away); each comes with the job's state as of sending. With
        `heartbeats`, also the job's latest heartbeat whenever a new one came (live only)."""
        self.get(job_id)
        sent, beat_sent = 0, ""

        def new_beat() -> events_pb2.Event | None:
            beat = self._beats.get(job_id) if heartbeats else None
            return beat if beat is not None and beat.event_id != beat_sent else None

        while True:
            with self._lock:
                history = self._events.get(job_id, [])
                while sent >= len(history) and new_beat() is None and is_active():
                    if self._jobs[job_id].status in TERMINAL:
                        return
                    self._lock.wait(poll_seconds)
                    history = self._events.get(job_id, [])
                if not is_active():
                    return
                pending, job, beat = history[sent:], self._jobs[job_id], new_beat()
            for event in pending:
                yield event, job
            sent += len(pending)
            if beat is not None:
                beat_sent = beat.event_id
                if job.status not in TERMINAL:
                    yield beat, job

    def apply(self, event: events_pb2.Event) -> None:
        """Folds one event into its job's state. Idempotent: applying an event twice changes nothing more."""
        kind = payload_kind(event)
        with self._lock:
            job = self._jobs.get(event.job_id)
            known = any(e.event_id == event.event_id for e in self._events.get(event.job_id, []))
        if known:
            return
        if job is None:
            if kind != "job_submitted":
                # Another deployment's job on a shared topic, or history from before this store.
                log.info("event for a job this service has no record of; ignored",
                         extra={"job_id": event.job_id, "kind": kind})
                return
            job = Job(job_id=event.job_id, spec=event.job_submitted.spec, owner=event.job_submitted.owner,
                      stage=Stage.JOB_STAGE_INGEST, status=Status.JOB_STATUS_PENDING)
            job.created_at.CopyFrom(event.occurred_at)
        else:
            job = Job.FromString(job.SerializeToString())  # fold on a copy; readers see whole states only
        # Our own submit already recorded the job; late events (progress after a cancel) must not
        # revive a finished one. Both still belong to the job's history.
        if kind != "job_submitted" and job.status not in TERMINAL:
            stage_before = job.stage
            _fold(job, event, kind)
            if job.stage != stage_before and kind != "stage_heartbeat":
                job.activity = ""  # what the previous stage was doing
            job.updated_at.CopyFrom(event.occurred_at)
            if _seconds(event.occurred_at) > _seconds(job.last_activity_at):
                job.last_activity_at.CopyFrom(event.occurred_at)
        try:
            if kind == "stage_heartbeat":  # the state moves, the history stays readable
                self._save(job, beat=event)
                stage = event.stage_heartbeat.stage
                self._stage_heard[stage] = max(self._stage_heard.get(stage, 0.0), _seconds(event.occurred_at))
            else:
                when = event.occurred_at.seconds * 1_000_000_000 + event.occurred_at.nanos
                self.store.put_bytes(f"{STATE_PREFIX}{event.job_id}/events/{when:020d}-{event.event_id}.pb",
                                     event.SerializeToString())
                self._save(job, event)
        except Exception:
            self.lost_sight()  # the fold is stuck (the store is down): no deadline runs meanwhile
            raise
        self.regained_sight()

    def apply_dead_letter(self, letter: DeadLetter) -> None:
        """A service gave up on one of a job's events: that stage failed, and the job with it."""
        event = letter.event()
        job_id = event.job_id if event is not None else (letter.key or b"").decode("utf-8", "replace")
        if letter.group == "jobs" or not job_id:
            log.error("dead letter the jobs service cannot attribute to a job's stage",
                      extra={"group": letter.group, "job_id": job_id, "reason": letter.reason})
            return
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or job.status in TERMINAL:
            log.info("dead letter for a job that is unknown here or already ended; ignored",
                     extra={"job_id": job_id, "group": letter.group})
            return
        stage = STAGE_OF_GROUP.get(letter.group, job.stage)
        kind = payload_kind(event) if event is not None else "an unreadable message"
        message = (f"the {letter.group} service gave up on {kind} after {max(letter.attempts, 1)} attempt(s): "
                   f"{letter.reason}")
        self.bus.publish(new_event(job_id, self.producer, stage_failed=events_pb2.StageFailed(
            stage=stage, message=message)))
        log.warning("dead letter: stage failed", extra={"job_id": job_id, "stage": stage_name(stage),
                                                        "reason": letter.reason})

    # ------------------------------------------------------------------ deadlines

    def lost_sight(self) -> None:
        """Events cannot be read or recorded (Kafka or the object store is down): deadlines pause, and
        restart from zero once `regained_sight` is called."""
        self._blind = True

    def regained_sight(self) -> None:
        if self._blind:
            self._blind = False
            self._watching_since = self.clock()

    def watchdog_round(self) -> None:
        """One round of the watchdog: deadlines run only while Kafka and the object store answer (blind to
        events, no deadline may run out meanwhile); a round that fails is retried on the next one."""
        try:
            self.bus.ping()
            self.store.ping()
        except Exception:  # noqa: BLE001 - whatever the client raises, we cannot see events
            self.lost_sight()
            return
        self.regained_sight()
        try:
            self.check_deadlines()
        except Exception:  # noqa: BLE001 - retried on the next round
            log.warning("checking stage deadlines failed; retrying", exc_info=True)

    def check_deadlines(self) -> list[str]:
        """Ends the jobs whose stage went silent past its deadline, or whose cancel was not confirmed
        in time; returns their ids. Runs periodically; safe on several replicas at once."""
        if self._blind:
            return []
        now = self.clock()
        with self._lock:
            live = [job for job in self._jobs.values() if job.status not in TERMINAL]
            self._ended_by_watchdog &= {job.job_id for job in live}
        ended = []
        for job in live:
            if job.job_id in self._ended_by_watchdog:
                continue
            last = max(_seconds(job.last_activity_at), _seconds(job.created_at), self._watching_since)
            if job.cancel_reason and now - max(_seconds(job.cancel_requested_at), self._watching_since) \
                    >= self.cancel_grace_s:
                log.warning("cancel not confirmed by the stage in time; ending the job as cancelled",
                            extra={"job_id": job.job_id, "stage": stage_name(job.stage)})
                event = new_event(job.job_id, self.producer, job_cancelled=events_pb2.JobCancelled(stage=job.stage))
            elif now - last >= self.stage_deadline_s and not self._queued_behind_others(job, now):
                event = new_event(job.job_id, self.producer, stage_failed=events_pb2.StageFailed(
                    stage=job.stage, message=self._silence_message(job, now)))
                log.warning("stage deadline passed; failing the job", extra={"job_id": job.job_id,
                                                                            "stage": stage_name(job.stage)})
            else:
                continue
            self.bus.publish(event)
            self._ended_by_watchdog.add(job.job_id)
            ended.append(job.job_id)
        return ended

    def _queued_behind_others(self, job: Job, now: float) -> bool:
        """The job's stage has not started on it (no activity of its own there), while the stage's
        service has said within the deadline that it is working on other jobs: it waits its turn."""
        heard = self._stage_heard.get(job.stage, 0.0)
        return not job.activity and now - heard < self.stage_deadline_s

    def _silence_message(self, job: Job, now: float) -> str:
        stage = stage_name(job.stage)
        service = SERVICE_OF_STAGE.get(job.stage, "responsible")
        if job.last_activity_at.seconds:
            heard = (f"last heard {now - _seconds(job.last_activity_at):.0f}s ago at "
                     f"{job.last_activity_at.ToJsonString()} ({job.activity or 'an event'})")
        else:
            heard = "nothing heard since the job was submitted"
        return (f"no progress from the {stage} stage within its {self.stage_deadline_s:.0f}s deadline; {heard}. "
                f"Is the {service} service running and able to reach Kafka and the object store?")

    def _save(self, job: Job, event: events_pb2.Event | None = None, beat: events_pb2.Event | None = None) -> None:
        self.store.put_bytes(f"{STATE_PREFIX}{job.job_id}/job.pb", job.SerializeToString())
        with self._lock:  # the event and the state it led to become visible together, for watchers
            if event is not None:
                self._events.setdefault(event.job_id, []).append(event)
            if beat is not None:
                self._beats[job.job_id] = beat
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
        if event.job_cancelled.stage:
            job.stage = event.job_cancelled.stage
    elif kind == "cancel_requested":
        job.cancel_requested_at.CopyFrom(event.occurred_at)
        job.cancel_reason = event.cancel_requested.reason or "cancelled"
    elif kind == "stage_heartbeat":
        beat = event.stage_heartbeat
        if beat.stage >= job.stage:  # a late beat of an earlier stage must not move the job back
            job.stage, job.status, job.activity = beat.stage, running, beat.activity
            # Waiting in the stage's queue (a busy trainer replica), or working on it (0: cleared).
            job.queue_position = max(beat.queue_position, 0)
            job.queue_reason = beat.activity if beat.queue_position > 0 else ""
    if kind not in ("stage_heartbeat", "cancel_requested"):  # the stage moved on, or the job ended
        job.queue_position, job.queue_reason = 0, ""
