"""Delivery rules both bus adapters share (design, "Contracts": Kafka).

Delivery is at-least-once, and each consumer group drops event ids it has already handled
(`ProcessedEvents`, the dedup log), so a redelivery after a crash or a rebalance is harmless.
A handler that keeps failing does not block its partition: after `max_attempts` tries
(exponential backoff between them) the original message becomes a `DeadLetter` with the
reason, and the group moves on.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError

from classforge.v1 import events_pb2
from services.common import metrics
from services.common.errors import Unavailable
from services.common.events.envelope import payload_kind

if TYPE_CHECKING:
    from services.common.events.interface import Handler
    from services.common.storage import ObjectStore

log = logging.getLogger("classforge.events")

#: Dead-letter reasons are cut to this many characters (they travel in a Kafka header).
MAX_REASON_CHARS = 1000

#: Names of consumer threads start with it (drain() must not be called from one).
THREAD_PREFIX = "classforge-events"

#: How long a handler that raises Unavailable (a dependency is down) is retried before its event is
#: dead-lettered; `float("inf")` retries for ever (the jobs service's fold must never drop an event).
DEFAULT_OUTAGE_WINDOW_S = 180.0
MAX_OUTAGE_BACKOFF_S = 10.0


def outage_window(chosen: float | None, default: float) -> float:
    """The outage window to use (`chosen`, else `default`); ValueError when negative."""
    window = default if chosen is None else chosen
    if not window >= 0:
        raise ValueError(f"outage_window_s must be >= 0 (inf: for ever), got {window}")
    return window


def truncate(text: str, limit: int = MAX_REASON_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def failure_reason(exc: BaseException) -> str:
    """An exception as a short dead-letter reason: "Type: message", cut to MAX_REASON_CHARS."""
    return truncate(f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- dedup log


class ProcessedEvents(ABC):
    """Which event ids a consumer group has already handled (the dedup log)."""

    @abstractmethod
    def seen(self, group: str, event_id: str) -> bool: ...

    @abstractmethod
    def mark(self, group: str, event_id: str) -> None: ...


class InMemoryProcessedEvents(ProcessedEvents):
    """For embedded runs and tests: forgets everything when the process ends."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def seen(self, group: str, event_id: str) -> bool:
        with self._lock:
            return (group, event_id) in self._seen

    def mark(self, group: str, event_id: str) -> None:
        with self._lock:
            self._seen.add((group, event_id))


_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")


def _key_part(name: str) -> str:
    """`name` as one object-key segment: as is when it is plain (uuid event ids, group names),
    otherwise a digest, so an id from a message can never climb out of its prefix."""
    if _SAFE_NAME.fullmatch(name):
        return name
    return "~" + hashlib.sha256(name.encode("utf-8")).hexdigest()


class ObjectStoreProcessedEvents(ProcessedEvents):
    """The dedup log as marker objects `state/events/<group>/<event_id>` in the object store:
    durable across restarts and shared by all replicas of a service. Markers are never
    deleted, so positive answers are cached (bounded) to spare the store a round trip."""

    PREFIX = "state/events"

    def __init__(self, store: ObjectStore, *, cache_size: int = 100_000):
        self.store = store
        self._cache: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def key(self, group: str, event_id: str) -> str:
        return f"{self.PREFIX}/{_key_part(group)}/{_key_part(event_id)}"

    def _remember(self, item: tuple[str, str]) -> None:
        with self._lock:
            self._cache[item] = None
            self._cache.move_to_end(item)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def seen(self, group: str, event_id: str) -> bool:
        with self._lock:
            if (group, event_id) in self._cache:
                return True
        if self.store.exists(self.key(group, event_id)):
            self._remember((group, event_id))
            return True
        return False

    def mark(self, group: str, event_id: str) -> None:
        marker = json.dumps({"group": group, "event_id": event_id, "processed_at": time.time()}).encode()
        self.store.put_bytes(self.key(group, event_id), marker)
        self._remember((group, event_id))


# --------------------------------------------------------------------------- dead letters


@dataclass(frozen=True)
class DeadLetter:
    """A message a group gave up on, as it sits on the dead-letter topic: the original bytes
    and key, plus why and where it came from."""

    value: bytes
    key: bytes | None
    reason: str
    group: str
    attempts: int
    source_topic: str
    source_partition: int
    source_offset: int

    def event(self) -> events_pb2.Event | None:
        """The original event, or None when the message was not a parseable Event."""
        try:
            return events_pb2.Event.FromString(self.value)
        except DecodeError:
            return None

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers for the dead-letter record (kafka-python format: (str, bytes) pairs)."""
        return [("reason", self.reason.encode("utf-8")),
                ("group", self.group.encode("utf-8")),
                ("attempts", str(self.attempts).encode()),
                ("source_topic", self.source_topic.encode("utf-8")),
                ("source_partition", str(self.source_partition).encode()),
                ("source_offset", str(self.source_offset).encode())]

    @classmethod
    def from_record(cls, value: bytes | None, key: bytes | None,
                    headers: Iterable[tuple[str, bytes | None]] | None) -> DeadLetter:
        fields = {name: (raw or b"").decode("utf-8", errors="replace") for name, raw in (headers or [])}

        def number(name: str) -> int:
            try:
                return int(fields.get(name, "-1"))
            except ValueError:
                return -1

        return cls(value=value or b"", key=key, reason=fields.get("reason", ""),
                   group=fields.get("group", ""), attempts=number("attempts"),
                   source_topic=fields.get("source_topic", ""),
                   source_partition=number("source_partition"), source_offset=number("source_offset"))


# --------------------------------------------------------------------------- delivery rules


class Outcome(Enum):
    HANDLED = "handled"
    SKIPPED = "skipped"  # filtered out by kinds, or already processed by this group
    DEAD = "dead"  # goes to the dead-letter topic, then counts as processed


@dataclass
class Result:
    outcome: Outcome
    event: events_pb2.Event | None = None
    reason: str = ""
    attempts: int = 0


class Stopping(Exception):
    """The bus is closing while a handler waits for its next attempt: leave the message
    uncommitted (it is delivered again after the restart)."""


class Delivery:
    """What a subscription does with one message: parse, filter by kind, drop duplicates, call
    the handler with bounded retries and exponential backoff. Errors of the dedup log itself
    (object store down) propagate: the caller retries the message later, it is no handler fault."""

    def __init__(self, group: str, handler: Handler, kinds: frozenset[str] | None, processed: ProcessedEvents,
                 max_attempts: int, backoff_s: float, stopping: threading.Event, outage_window_s: float):
        self.group, self.handler, self.kinds, self.processed = group, handler, kinds, processed
        self.max_attempts, self.backoff_s, self.stopping = max_attempts, backoff_s, stopping
        self.outage_window_s = outage_window_s

    def process(self, value: bytes | None, where: dict) -> Result:
        try:
            event = events_pb2.Event.FromString(value or b"")
        except DecodeError as exc:
            return Result(Outcome.DEAD, reason=truncate(f"unparseable: {exc}"))
        if not event.event_id:
            return Result(Outcome.DEAD, reason="unparseable: the message is not an Event with an event_id")
        kind = payload_kind(event)
        info = {**where, "group": self.group, "event_id": event.event_id, "job_id": event.job_id,
                "kind": kind}
        if self.kinds is not None and kind not in self.kinds:
            return Result(Outcome.SKIPPED, event)
        if self.processed.seen(self.group, event.event_id):
            log.info("skipping an event this group already processed", extra=info)
            return Result(Outcome.SKIPPED, event)
        failures, outage_started = 0, None  # handler faults; start of the current outage
        for attempt in itertools.count(1):
            try:
                self.handler(event)
            except Unavailable as exc:
                # A dependency is down: ride the outage out for up to `outage_window_s`, then give up.
                now = time.monotonic()
                outage_started = outage_started if outage_started is not None else now
                if now - outage_started >= self.outage_window_s:
                    log.error("dependency still unavailable after %.0fs; sending the event to the dead-letter "
                              "topic", now - outage_started, extra={**info, "attempt": attempt})
                    return Result(Outcome.DEAD, event, failure_reason(exc), attempt)
                delay = min(self.backoff_s * 2 ** min(attempt - 1, 16), MAX_OUTAGE_BACKOFF_S)
                log.warning("dependency unavailable (%s); retrying in %.2fs", failure_reason(exc), delay,
                            extra={**info, "attempt": attempt})
            except Exception as exc:  # noqa: BLE001 - any handler failure is retried, then dead-lettered
                failures += 1
                if failures >= self.max_attempts:
                    log.error("handler failed %d times; sending the event to the dead-letter topic", failures,
                              extra={**info, "attempt": attempt}, exc_info=True)
                    return Result(Outcome.DEAD, event, failure_reason(exc), attempt)
                delay = self.backoff_s * 2 ** (failures - 1)
                log.warning("handler failed (%s); retrying in %.2fs", failure_reason(exc), delay,
                            extra={**info, "attempt": attempt})
            else:
                self.processed.mark(self.group, event.event_id)
                return Result(Outcome.HANDLED, event, attempts=attempt)
            if self.stopping.wait(delay):
                raise Stopping()
        raise AssertionError("unreachable")  # pragma: no cover

    def settle_dead(self, result: Result) -> None:
        """After the dead letter is safely written: never try this event again."""
        metrics.DEAD_LETTERS.labels(self.group).inc()
        if result.event is not None and result.event.event_id:
            self.processed.mark(self.group, result.event.event_id)


class Backoff:
    """Exponential delay for infrastructure trouble (broker or store down), reset on success."""

    def __init__(self, initial: float, maximum: float = 30.0):
        self.initial, self.maximum, self.failures = max(initial, 0.05), maximum, 0

    def next(self) -> float:
        self.failures += 1
        return min(self.maximum, self.initial * 2 ** (self.failures - 1))

    def reset(self) -> None:
        self.failures = 0


# --------------------------------------------------------------------------- consumer threads (both adapters)


def check_consumers_alive(subscriptions: dict, closing: bool) -> None:
    dead = sorted(group for (_, group), sub in subscriptions.items()
                  if sub.thread.ident is not None and not sub.thread.is_alive())
    if dead and not closing:
        raise RuntimeError(f"event consumer thread(s) died: {', '.join(dead)}")


def join_consumers(subscriptions: list, deadline: float) -> None:
    current = threading.current_thread()
    for subscription in subscriptions:
        if subscription.thread is not current and subscription.thread.ident is not None:
            subscription.thread.join(max(0.0, deadline - time.monotonic()))
            if subscription.thread.is_alive():
                log.warning("consumer still busy after the close timeout; abandoning it",
                            extra={"group": subscription.group})

