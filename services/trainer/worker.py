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
from services.trainer.lease import LeaseLost

log = logging.getLogger("classforge.trainer")


class StopSignal:
    """How the running job is asked to stop at its next step: `event` is the Trainer's stop event and
    `reason` says why: "cancel" (the job ends STOPPED), "shutdown" (it stays RUNNING, and the next
    process resumes it from the checkpoint) or "fenced" (another replica took the job over: this one
    stops without writing anything more)."""

    def __init__(self):
        self.event = threading.Event()
        self.reason = ""

    def set(self, reason: str) -> None:
        self.reason = reason
        self.event.set()

    @property
    def cancelled(self) -> bool:
        return self.reason == "cancel"

    @property
    def fenced(self) -> bool:
        return self.reason == "fenced"


class TrainingWorker:
    def __init__(self, lock: threading.Condition, stage: Stage, run_job: Callable[[str, StopSignal], None],
                 fail_job: Callable[[str, str], None], *, may_run: Callable[[str], bool] = lambda job_id: True,
                 ran: Callable[[str, StopSignal], None] = lambda job_id, stop: None, replica: str = ""):
        self._lock = lock  # shared with the TrainingStore's cache (see there)
        self._stage = stage
        self._run_job = run_job
        self._fail_job = fail_job
        self._may_run = may_run  # False: the job's lease is no longer this replica's; it is skipped
        self._ran = ran  # after each run, whatever its end (the lease is released there)
        self._replica = replica
        self._queue_changed = threading.Event()  # the waiting jobs hear their new position at once
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
        self._queue_changed.set()

    def queued(self) -> list[str]:
        with self._lock:
            return list(self._queue)

    def drop(self, job_id: str) -> None:
        """Another replica took the job over: a queued one leaves the queue, a running one stops at its
        next step without writing (its final checkpoint is refused by the fence)."""
        with self._lock:
            if job_id == self._active:
                self._stop.set("fenced")
            elif job_id in self._queue:
                self._queue.remove(job_id)
        self._queue_changed.set()

    def requeue(self, job_ids: list[str]) -> None:
        """Start-up: queues the jobs that are neither running nor queued already."""
        with self._lock:
            for job_id in job_ids:
                if not self.holds(job_id):
                    self._queue.append(job_id)
            self._ensure_started()
            self._lock.notify_all()
        self._queue_changed.set()

    def dequeue(self, job_id: str) -> None:
        with self._lock:
            if job_id in self._queue:
                self._queue.remove(job_id)
        self._queue_changed.set()

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
        """Jobs waiting behind the one training still make progress: they are queued, not lost. Each
        heartbeat carries the job's place in this replica's queue (the jobs service shows it as QUEUED),
        sent again at once whenever the queue changes."""
        thread = self._thread
        while thread is not None and thread.is_alive():
            self._queue_changed.clear()
            with self._lock:
                queued, active = list(self._queue), self._active
            where = f" on trainer {self._replica}" if self._replica else ""
            behind = f", behind the running job {active}" if active else ""
            for position, job_id in enumerate(queued, start=1):
                self._stage.heartbeat(job_id, f"queued for training{where}: position {position} of "
                                              f"{len(queued)}{behind}", queue_position=position)
            self._queue_changed.wait(self._stage.heartbeat_seconds)
            time.sleep(0.2)  # several changes at once (a burst of jobs) make one round of heartbeats

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
            self._queue_changed.set()
            try:
                if not self._may_run(job_id):
                    continue
                with self._stage.heartbeats(job_id, lambda: "training"):
                    self._run_job(job_id, stop)
            except LeaseLost as exc:  # another replica has the job: nothing to report, it reports
                log.warning("stopped training a job another replica took over: %s", exc.message,
                            extra={"job_id": job_id})
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
                try:
                    self._ran(job_id, stop)
                except Exception:  # noqa: BLE001 - the lease then expires on its own
                    log.exception("could not settle the job's lease after its run", extra={"job_id": job_id})
