"""What every pipeline stage does while it holds a job, written once, so that every job ends:

- **Heartbeats.** While a stage works on a job, a thread publishes `stage_heartbeat` every
  `heartbeat_seconds`. The jobs service fails a job whose active stage stays silent past its
  progress deadline, so a crashed process or a dead worker thread cannot leave a job RUNNING.
- **Cancellation.** The jobs service writes a marker `state/cancellations/<job>.json` before it
  publishes `cancel_requested`. A stage busy inside an event handler receives that event only after
  the handler returns, so it polls the marker instead (`StageWork.check()`, at most every
  `check_seconds`). A stage that stops for a cancel publishes `job_cancelled` naming itself.
- **Failure.** `stage_failed` with the stage and a message a person can act on.

Use:

    with self.stage.working(job_id) as work:   # raises JobCancelled when already cancelled
        for item in items:
            work.check()                       # raises JobCancelled once a cancel was requested
            ...
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator

from classforge.v1 import common_pb2, events_pb2
from services.common.errors import Unavailable
from services.common.events import EventBus, new_event
from services.common.storage import ObjectNotFound, ObjectStore

log = logging.getLogger("classforge.stage")


class JobCancelled(Exception):
    """The job was cancelled; the stage stops its work on it (not an error)."""

    def __init__(self, job_id: str, reason: str):
        super().__init__(f"job {job_id} was cancelled: {reason}")
        self.job_id, self.reason = job_id, reason


class Cancellations:
    """Cancel requests as marker objects in the object store: the jobs service writes them, every
    stage reads them. A marker is never removed: a cancelled job stays cancelled."""

    PREFIX = "state/cancellations/"

    def __init__(self, store: ObjectStore):
        self.store = store

    def _key(self, job_id: str) -> str:
        return f"{self.PREFIX}{job_id}.json"

    def request(self, job_id: str, reason: str) -> None:
        body = json.dumps({"job_id": job_id, "reason": reason, "requested_at": time.time()}).encode()
        self.store.put_bytes(self._key(job_id), body, "application/json")

    def reason(self, job_id: str) -> str | None:
        """Why the job was cancelled, or None when it was not. Raises Unavailable when the store is down."""
        try:
            body = self.store.get_bytes(self._key(job_id))
        except ObjectNotFound:
            return None
        try:
            return str(json.loads(body).get("reason") or "cancelled")
        except ValueError:
            return "cancelled"


class StageWork:
    """One stage's hold on one job, made by `Stage.working`."""

    def __init__(self, stage: Stage, job_id: str, activity: str):
        self.stage, self.job_id, self.activity = stage, job_id, activity
        self.counted: tuple[int, int, str] = (0, 0, "")
        self._next_check = time.monotonic() + stage.check_seconds

    def check(self) -> None:
        """Raises JobCancelled once a cancel was requested. Cheap: reads the store at most every
        `check_seconds`. An unreadable store is no cancel: the work's own store calls will notice."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.stage.check_seconds
        try:
            reason = self.stage.cancellations.reason(self.job_id)
        except Unavailable:
            return
        if reason is not None:
            raise JobCancelled(self.job_id, reason)

    def say(self, activity: str) -> None:
        """What the next heartbeats report the stage is doing (uncounted)."""
        self.progress(activity)

    def progress(self, activity: str, done: int = 0, total: int = 0, unit: str = "") -> None:
        """What the next heartbeats say: the activity and, where the work is counted, `done` of `total`
        `unit`s (progress bars and time estimates of `classforge run` and `watch`)."""
        self.activity, self.counted = activity, (done, total, unit)


class Stage:
    """The events and checks one stage (ingest, records, training, …) shares with the jobs service."""

    def __init__(self, bus: EventBus, store: ObjectStore, stage: int, producer: str, *,
                 heartbeat_seconds: float = 30.0, check_seconds: float = 2.0):
        self.bus, self.stage, self.producer = bus, stage, producer
        self.cancellations = Cancellations(store)
        self.heartbeat_seconds, self.check_seconds = heartbeat_seconds, check_seconds
        self.name = common_pb2.JobStage.Name(stage).removeprefix("JOB_STAGE_").lower()

    @contextlib.contextmanager
    def working(self, job_id: str, activity: str = "working") -> Iterator[StageWork]:
        """Heartbeats for the job while the block runs. Raises JobCancelled at once when the job was
        already cancelled, and Unavailable when that cannot be read (the caller retries)."""
        reason = self.cancellations.reason(job_id)
        if reason is not None:
            raise JobCancelled(job_id, reason)
        work = StageWork(self, job_id, activity)
        with self.heartbeats(job_id, lambda: work.activity, lambda: work.counted):
            yield work

    @contextlib.contextmanager
    def heartbeats(self, job_id: str, activity: Callable[[], str],
                   counted: Callable[[], tuple[int, int, str]] = lambda: (0, 0, "")) -> Iterator[None]:
        """A thread publishing `stage_heartbeat` (saying `activity()` and `counted()`: done, total, unit)
        now and every `heartbeat_seconds` until the block ends."""
        stop = threading.Event()

        def beat() -> None:
            while True:
                self.heartbeat(job_id, activity(), *counted())
                if stop.wait(self.heartbeat_seconds):
                    return

        thread = threading.Thread(target=beat, name=f"heartbeat-{self.name}-{job_id[:8]}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    def is_cancelled(self, job_id: str) -> bool:
        return self.cancellations.reason(job_id) is not None

    def heartbeat(self, job_id: str, activity: str, done: int = 0, total: int = 0, unit: str = "",
                  queue_position: int = 0) -> None:
        """Best effort: a broker outage must not fail the work; the deadline is long enough to ride it out.
        `queue_position` > 0: the job waits in the stage's queue at that place (the job shows QUEUED)."""
        try:
            self.bus.publish(new_event(job_id, self.producer, stage_heartbeat=events_pb2.StageHeartbeat(
                stage=self.stage, activity=activity, done=done, total=total, unit=unit,
                queue_position=queue_position)))
        except Exception as exc:  # noqa: BLE001 - heartbeats are advisory
            log.warning("could not publish a heartbeat (%s)", exc, extra={"job_id": job_id, "stage": self.name})

    def acknowledge_cancel(self, job_id: str, checkpoint_uri: str = "") -> None:
        """Says the stage stopped its work on a cancelled job (the job then ends CANCELLED)."""
        log.info("stopped work on a cancelled job", extra={"job_id": job_id, "stage": self.name})
        self.bus.publish(new_event(job_id, self.producer, job_cancelled=events_pb2.JobCancelled(
            stage=self.stage, checkpoint_uri=checkpoint_uri)))

    def fail(self, job_id: str, message: str) -> None:
        self.bus.publish(new_event(job_id, self.producer, stage_failed=events_pb2.StageFailed(
            stage=self.stage, message=message)))
