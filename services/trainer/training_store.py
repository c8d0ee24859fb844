"""The trainer's state of each job: a `Training` under state/trainer/<job>/training.pb, and the spec's
TrainingConfig as state/trainer/<job>/config.pb, cached in memory. The cache answers GetTraining even
when the store is down (a failure whose state could not be saved), and `wait` watches it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from classforge.v1 import common_pb2, trainer_service_pb2
from services.common.errors import InvalidArgument, Unavailable
from services.common.storage import ObjectNotFound, ObjectStore, check_key

Training = trainer_service_pb2.Training
STATE_PREFIX = "state/trainer/"


def copy_of(training: Training) -> Training:
    """Callers get copies: the cached messages are replaced on every change, never handed out."""
    copy = Training()
    copy.CopyFrom(training)
    return copy


class TrainingStore:
    def __init__(self, store: ObjectStore, lock: threading.Condition,
                 guard: Callable[[str], None] | None = None):
        # `lock` guards the cache and is notified on every change (wait). The worker's queue shares it,
        # so that a start or a cancel sees a job's state and its place in the queue at once.
        # `guard(job_id)` runs before every save and raises to refuse it: a replica that lost the job's
        # lease must not write its state (lease.Leases.check_writable).
        self.store = store
        self.lock = lock
        self.guard = guard
        self._trainings: dict[str, Training] = {}

    def _key(self, job_id: str, name: str) -> str:
        return f"{STATE_PREFIX}{job_id}/{name}"

    def check_job_id(self, job_id: str) -> None:
        if not job_id:
            raise InvalidArgument("job_id", "is required")
        check_key(self._key(job_id, "training.pb"), "job_id")
        if "/" in job_id:
            raise InvalidArgument("job_id", f"{job_id!r} must not contain '/'")

    def save(self, training: Training) -> None:
        if self.guard is not None:
            self.guard(training.job_id)
        self.store.put_bytes(self._key(training.job_id, "training.pb"), training.SerializeToString())
        with self.lock:
            self._trainings[training.job_id] = training
            self.lock.notify_all()

    def load(self, job_id: str) -> Training | None:
        with self.lock:
            cached = self._trainings.get(job_id)
        if cached is not None:
            return cached
        try:
            training = Training.FromString(self.store.get_bytes(self._key(job_id, "training.pb")))
        except ObjectNotFound:
            return None
        with self.lock:
            return self._trainings.setdefault(job_id, training)

    def load_fresh(self, job_id: str) -> Training | None:
        """The stored state, not the cache: with several replicas, another one may have changed it. The
        cached copy answers while the store is unavailable."""
        try:
            training = Training.FromString(self.store.get_bytes(self._key(job_id, "training.pb")))
        except ObjectNotFound:
            with self.lock:
                return self._trainings.get(job_id)
        except Unavailable:
            with self.lock:
                cached = self._trainings.get(job_id)
            if cached is None:
                raise
            return cached
        with self.lock:
            self._trainings[job_id] = training
            self.lock.notify_all()
        return training

    def evict(self, job_id: str) -> None:
        """Forgets the cached state (another replica owns the job now)."""
        with self.lock:
            self._trainings.pop(job_id, None)

    def load_all(self) -> list[Training]:
        """Every training in the store, into the cache (start-up)."""
        trainings = []
        for info in self.store.list(STATE_PREFIX):
            if info.key.endswith("/training.pb"):
                training = Training.FromString(self.store.get_bytes(info.key))
                with self.lock:
                    self._trainings[training.job_id] = training
                trainings.append(training)
        return trainings

    def update(self, job_id: str, change: Callable[[Training], None], persist: bool = True) -> Training:
        """Applies `change` to a copy of the job's training and caches it; `persist` saves it too (progress
        within an epoch is not worth a write)."""
        with self.lock:
            training = copy_of(self._trainings[job_id])
            change(training)
            if not persist:
                self._trainings[job_id] = training
                self.lock.notify_all()
        if persist:
            self.save(training)
        return training

    def wait(self, job_id: str, statuses: set[int], timeout: float) -> Training:
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                training = self._trainings.get(job_id)
                if training is not None and training.status in statuses:
                    return copy_of(training)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"training {job_id} did not reach {statuses} in {timeout}s "
                                       f"(now {training.status if training else None})")
                self.lock.wait(min(remaining, 1.0))

    def config(self, job_id: str) -> common_pb2.TrainingConfig | None:
        """The job spec's training config, as job_submitted (or StartTraining) gave it."""
        try:
            return common_pb2.TrainingConfig.FromString(self.store.get_bytes(self._key(job_id, "config.pb")))
        except ObjectNotFound:
            return None

    def save_config(self, job_id: str, config: common_pb2.TrainingConfig) -> None:
        self.store.put_bytes(self._key(job_id, "config.pb"), config.SerializeToString())
