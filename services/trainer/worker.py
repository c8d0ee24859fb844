"""The trainer's worker thread: trains the queued jobs one at a time, so that the event consumer only
queues a job and returns (never blocked past max.poll.interval), and keeps the waiting jobs' heartbeats
going."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

from services.common.stage_work import Stage
from services.trainer import metrics

log = logging.getLogger("classforge.trainer")


class StopSignal:
    """How the running job is asked to stop at its next step: `event` is the Trainer's stop event and
    `reason` says why: "cancel" (the job ends STOPPED) or "shutdown" (it stays RUNNING, and the next
    process resumes it from the checkpoint)."""

    def __init__(self):
        self.event = threading.Event()
        self.reason = ""

    def set(self, reason: str) -> None:
        self.reason = reason
        self.event.set()

    @property
    def cancelled(self) -> bool:
        return self.reason == "cancel"


class TrainingWorker:
    def __init__(self, lock: threading.Condition, stage: Stage, run_job: Callable[[str, StopSignal], None],
                 fail_job: Callable[[str, str], None]):
        self._lock = lock  # shared with the TrainingStore's cache (see there)
        self._stage = stage
        self._run_job = run_job
        self._fail_job = fail_job
        self._queue: collections.deque[str] = collections.deque()
        self._active: str | None = None
        self._stop = StopSignal()
        self._closing = False
        self._thread: threading.Thread | None = None

    @property
    def closing(self) -> bool:
        return self._closing

    def holds(self, job_id: str) -> bool:
        """Running or queued."""
        with self._lock:
            return job_id == self._active or job_id in self._queue

    def is_active(self, job_id: str) -> bool:
        with self._lock:
            return job_id == self._active

    def enqueue(self, job_id: str) -> None:
        with self._lock:
            self._queue.append(job_id)
            self._ensure_started()
            self._lock.notify_all()

    def requeue(self, job_ids: list[str]) -> None:
        """Start-up: queues the jobs that are neither running nor queued already."""
        with self._lock:
            for job_id in job_ids:
                if not self.holds(job_id):
                    self._queue.append(job_id)
            self._ensure_started()
            self._lock.notify_all()

    def dequeue(self, job_id: str) -> None:
        with self._lock:
            if job_id in self._queue:
                self._queue.remove(job_id)

    def stop_active(self, reason: str) -> None:
        with self._lock:
            self._stop.set(reason)

    def close(self, timeout: float) -> None:
        """A running job stops at the next step with a checkpoint and stays RUNNING."""
        with self._lock:
            self._closing = True
            if self._active is not None:
                self._stop.set("shutdown")
            self._lock.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def check(self) -> None:
        """A thread that died inside this live process (jobs waiting, nobody training them) is an error,
        not jobs silently held."""
        with self._lock:
            waiting = bool(self._queue) or self._active is not None
            dead = self._thread is not None and not self._thread.is_alive() and not self._closing
        if waiting and dead:
            raise RuntimeError("the training worker thread has died; jobs are waiting")

    def _ensure_started(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="trainer-worker", daemon=True)
            self._thread.start()
            threading.Thread(target=self._beat_for_queued, name="trainer-queue-heartbeats", daemon=True).start()

    def _beat_for_queued(self) -> None:
        """Jobs waiting behind the one training still make progress: they are queued, not lost."""
        thread = self._thread
        while thread is not None and thread.is_alive():
            with self._lock:
                queued = list(self._queue)
            for position, job_id in enumerate(queued, start=1):
                self._stage.heartbeat(job_id, f"queued for training, position {position} of {len(queued)}")
            time.sleep(self._stage.heartbeat_seconds)

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._lock.wait()
                if self._closing:
                    return
                job_id = self._queue.popleft()
                self._active = job_id
                self._stop = stop = StopSignal()
            try:
                with self._stage.heartbeats(job_id, lambda: "training"):
                    self._run_job(job_id, stop)
            except Exception as exc:  # noqa: BLE001 - one job's failure must not stop the worker
                log.exception("training crashed", extra={"job_id": job_id})
                try:
                    self._fail_job(job_id, f"the trainer crashed: {type(exc).__name__}: {getattr(exc, 'message', exc)}")
                except Exception:  # noqa: BLE001 - Kafka is down too: the jobs service's deadline ends the job
                    log.exception("could not report the failure", extra={"job_id": job_id})
            finally:
                with self._lock:
                    self._active = None
                metrics.RUNNING.labels(job_id).set(0)
                metrics.idle()
