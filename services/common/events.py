"""The event bus: how services talk to each other (design, "Contracts": Kafka).

Every message is one `classforge.v1.Event`; the Kafka key is the job id, so the events of a
job keep their order. Delivery is at-least-once, and each consumer group drops event ids it
has already handled (`ProcessedEvents`), so a redelivery after a crash or a rebalance is
harmless. A handler that keeps failing does not block its partition: after `max_attempts`
tries (exponential backoff between them) the original message goes to the dead-letter topic
with the reason, and the group moves on.

Two adapters share one contract (tests/contracts/event_bus_contract.py):

- `KafkaEventBus` (distributed mode): kafka-python, producer with acks=all and idempotence,
  one consumer per subscription, offsets committed synchronously after the work is done.
- `InProcessEventBus` (embedded mode): one append-only log in memory, one thread per
  consumer group, the same dedup / retry / dead-letter rules.

Both replay the topic from the beginning for a group that has never consumed
(Kafka: auto_offset_reset=earliest), so a service that subscribes late misses nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import socket
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import AuthorizationError, IllegalStateError, TopicAlreadyExistsError, for_code

from classforge.v1 import events_pb2
from services.common import metrics
from services.common.errors import InvalidArgument, Unavailable

if TYPE_CHECKING:
    from services.common.storage import ObjectStore

log = logging.getLogger("classforge.events")

EVENTS_TOPIC = "classforge.events"
DEAD_LETTER_TOPIC = "classforge.events.dlq"

Handler = Callable[[events_pb2.Event], None]

#: Every payload kind, in field order: the names `kinds=` filters accept.
PAYLOAD_KINDS: tuple[str, ...] = tuple(
    field.name for field in events_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"].fields)

#: Dead-letter reasons are cut to this many characters (they travel in a Kafka header).
MAX_REASON_CHARS = 1000

THREAD_PREFIX = "classforge-events"

#: How long a handler that raises Unavailable (a dependency is down) is retried before its event is
#: dead-lettered; `float("inf")` retries for ever (the jobs service's fold must never drop an event).
DEFAULT_OUTAGE_WINDOW_S = 180.0
MAX_OUTAGE_BACKOFF_S = 10.0


def new_event(job_id: str, producer: str, **payload) -> events_pb2.Event:
    """A new event with a fresh uuid4 event_id, occurred_at = now and exactly one payload, e.g.
    `new_event("job-1", "jobs", job_submitted=events_pb2.JobSubmitted(spec=spec))`."""
    if len(payload) != 1:
        raise TypeError(f"new_event() takes exactly one payload keyword argument (one of "
                        f"{', '.join(PAYLOAD_KINDS)}), got {len(payload)}: {sorted(payload)}")
    ((kind, message),) = payload.items()
    if kind not in PAYLOAD_KINDS:
        raise TypeError(f"new_event() got an unknown payload {kind!r}; "
                        f"expected one of {', '.join(PAYLOAD_KINDS)}")
    event = events_pb2.Event(event_id=str(uuid.uuid4()), job_id=job_id, producer=producer)
    event.occurred_at.GetCurrentTime()
    field = getattr(event, kind)
    field.CopyFrom(message)  # TypeError when the message is not of the payload's type
    field.SetInParent()  # an empty payload message still selects the oneof
    return event


def payload_kind(event: events_pb2.Event) -> str:
    """The name of the payload the event carries, e.g. "job_submitted"; "" when it has none."""
    return event.WhichOneof("payload") or ""


def _check_kinds(kinds: Iterable[str] | None) -> frozenset[str] | None:
    if kinds is None:
        return None
    if isinstance(kinds, str):
        kinds = [kinds]
    chosen = frozenset(kinds)
    unknown = sorted(chosen - set(PAYLOAD_KINDS))
    if unknown:
        raise ValueError(f"unknown event kinds {unknown}; expected some of {', '.join(PAYLOAD_KINDS)}")
    return chosen


def _window(chosen: float | None, default: float) -> float:
    window = default if chosen is None else chosen
    if not window >= 0:
        raise ValueError(f"outage_window_s must be >= 0 (inf: for ever), got {window}")
    return window


def _truncate(text: str, limit: int = MAX_REASON_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _reason(exc: BaseException) -> str:
    return _truncate(f"{type(exc).__name__}: {exc}")


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


DeadLetterHandler = Callable[[DeadLetter], None]


# --------------------------------------------------------------------------- the interface


class EventBus(ABC):
    """Publish events; deliver them to consumer groups (one group per service)."""

    max_attempts: int

    @abstractmethod
    def publish(self, event: events_pb2.Event) -> None:
        """Returns once the broker acknowledged the event; raises Unavailable otherwise."""

    @abstractmethod
    def subscribe(self, group: str, handler: Handler, kinds: Iterable[str] | None = None, *,
                  outage_window_s: float | None = None) -> None:
        """Starts delivering to `handler` in a background thread. Events whose payload kind is not
        in `kinds` are skipped (and committed). One subscription per group on one bus. A handler
        raising Unavailable is retried for `outage_window_s` (default: the bus's), any other
        failure `max_attempts` times; then the event goes to the dead-letter topic."""

    @abstractmethod
    def ping(self) -> None:
        """Raises Unavailable when the broker cannot be reached (health readiness)."""

    @abstractmethod
    def close(self, timeout: float = 10.0) -> None:
        """Flushes, stops the consumers once their in-flight handler finished, commits, closes."""

    def subscribe_dead_letters(self, group: str, handler: DeadLetterHandler) -> None:
        """Delivers every dead letter (from the beginning, for a new group) to `handler`.
        For operators' tools and tests; a failing handler is logged and the letter skipped."""
        raise NotImplementedError(f"{type(self).__name__} has no dead-letter subscription")

    @abstractmethod
    def check_consumers(self) -> None:
        """Readiness: raises when a subscription's consumer thread died while the bus is open (a
        service that no longer consumes must not say SERVING)."""

    def publish_raw(self, key: bytes | None, value: bytes) -> None:
        """Puts arbitrary bytes on the event topic (tests of the unparseable-message path)."""
        raise NotImplementedError(f"{type(self).__name__} cannot publish raw bytes")


def _check_publishable(event: events_pb2.Event) -> None:
    if not isinstance(event, events_pb2.Event):
        raise TypeError(f"publish() takes a classforge.v1.Event, got {type(event).__name__}")
    if not event.event_id:
        raise InvalidArgument("event.event_id",
                              "is empty; build events with services.common.events.new_event()")


# --------------------------------------------------------------------------- delivery rules (shared)


class _Outcome(Enum):
    HANDLED = "handled"
    SKIPPED = "skipped"  # filtered out by kinds, or already processed by this group
    DEAD = "dead"  # goes to the dead-letter topic, then counts as processed


@dataclass
class _Result:
    outcome: _Outcome
    event: events_pb2.Event | None = None
    reason: str = ""
    attempts: int = 0


class _Stopping(Exception):
    """The bus is closing while a handler waits for its next attempt: leave the message
    uncommitted (it is delivered again after the restart)."""


class _Delivery:
    """What a subscription does with one message: parse, filter by kind, drop duplicates, call
    the handler with bounded retries and exponential backoff. Errors of the dedup log itself
    (object store down) propagate: the caller retries the message later, it is no handler fault."""

    def __init__(self, group: str, handler: Handler, kinds: frozenset[str] | None, processed: ProcessedEvents,
                 max_attempts: int, backoff_s: float, stopping: threading.Event, outage_window_s: float):
        self.group, self.handler, self.kinds, self.processed = group, handler, kinds, processed
        self.max_attempts, self.backoff_s, self.stopping = max_attempts, backoff_s, stopping
        self.outage_window_s = outage_window_s

    def process(self, value: bytes | None, where: dict) -> _Result:
        try:
            event = events_pb2.Event.FromString(value or b"")
        except DecodeError as exc:
            return _Result(_Outcome.DEAD, reason=_truncate(f"unparseable: {exc}"))
        if not event.event_id:
            return _Result(_Outcome.DEAD, reason="unparseable: the message is not an Event with an event_id")
        kind = payload_kind(event)
        info = {**where, "group": self.group, "event_id": event.event_id, "job_id": event.job_id,
                "kind": kind}
        if self.kinds is not None and kind not in self.kinds:
            return _Result(_Outcome.SKIPPED, event)
        if self.processed.seen(self.group, event.event_id):
            log.info("skipping an event this group already processed", extra=info)
            return _Result(_Outcome.SKIPPED, event)
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
                    return _Result(_Outcome.DEAD, event, _reason(exc), attempt)
                delay = min(self.backoff_s * 2 ** min(attempt - 1, 16), MAX_OUTAGE_BACKOFF_S)
                log.warning("dependency unavailable (%s); retrying in %.2fs", _reason(exc), delay,
                            extra={**info, "attempt": attempt})
            except Exception as exc:  # noqa: BLE001 - any handler failure is retried, then dead-lettered
                failures += 1
                if failures >= self.max_attempts:
                    log.error("handler failed %d times; sending the event to the dead-letter topic", failures,
                              extra={**info, "attempt": attempt}, exc_info=True)
                    return _Result(_Outcome.DEAD, event, _reason(exc), attempt)
                delay = self.backoff_s * 2 ** (failures - 1)
                log.warning("handler failed (%s); retrying in %.2fs", _reason(exc), delay,
                            extra={**info, "attempt": attempt})
            else:
                self.processed.mark(self.group, event.event_id)
                return _Result(_Outcome.HANDLED, event, attempts=attempt)
            if self.stopping.wait(delay):
                raise _Stopping()
        raise AssertionError("unreachable")  # pragma: no cover

    def settle_dead(self, result: _Result) -> None:
        """After the dead letter is safely written: never try this event again."""
        metrics.DEAD_LETTERS.labels(self.group).inc()
        if result.event is not None and result.event.event_id:
            self.processed.mark(self.group, result.event.event_id)


class _Backoff:
    """Exponential delay for infrastructure trouble (broker or store down), reset on success."""

    def __init__(self, initial: float, maximum: float = 30.0):
        self.initial, self.maximum, self.failures = max(initial, 0.05), maximum, 0

    def next(self) -> float:
        self.failures += 1
        return min(self.maximum, self.initial * 2 ** (self.failures - 1))

    def reset(self) -> None:
        self.failures = 0


# --------------------------------------------------------------------------- in-process adapter


class _InProcessSubscription:
    def __init__(self, bus: InProcessEventBus, group: str, source: list,
                 deliver: Callable[[int, object], None], backoff_s: float, stopping: threading.Event):
        self.bus, self.group, self.source, self.deliver = bus, group, source, deliver
        self.cursor = 0  # index of the next entry of `source` to deliver
        self.stopping = stopping
        self.backoff = _Backoff(backoff_s, maximum=5.0)
        self.thread = threading.Thread(target=self._run, name=f"{THREAD_PREFIX}-{group}", daemon=True)

    def caught_up(self) -> bool:
        return self.cursor >= len(self.source) or not self.thread.is_alive()

    def _run(self) -> None:
        cond = self.bus._cond
        while True:
            with cond:
                cond.wait_for(lambda: self.stopping.is_set() or self.cursor < len(self.source))
                if self.stopping.is_set():
                    return
                offset, entry = self.cursor, self.source[self.cursor]
            try:
                self.deliver(offset, entry)
            except _Stopping:
                return
            except Exception:  # noqa: BLE001 - the dedup log is unreachable: retry the same entry later
                delay = self.backoff.next()
                log.warning("could not process an event; retrying in %.1fs", delay,
                            extra={"group": self.group, "offset": offset}, exc_info=True)
                if self.stopping.wait(delay):
                    return
                continue
            self.backoff.reset()
            with cond:
                self.cursor += 1
                cond.notify_all()


class InProcessEventBus(EventBus):
    """Embedded mode: every service in one process. The topic is a list in memory (one
    partition, so order holds for all events, not only per job); each group has its own
    thread and cursor and starts at the beginning of the log. Events are stored serialised,
    so each handler gets its own copy, exactly as with Kafka."""

    def __init__(self, processed: ProcessedEvents | None = None, *, max_attempts: int = 3,
                 backoff_s: float = 0.1, topic: str = EVENTS_TOPIC,
                 dead_letter_topic: str = DEAD_LETTER_TOPIC, outage_window_s: float = DEFAULT_OUTAGE_WINDOW_S):
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.processed = processed if processed is not None else InMemoryProcessedEvents()
        self.max_attempts, self.backoff_s = max_attempts, backoff_s
        self.outage_window_s = _window(outage_window_s, 0)
        self.topic, self.dead_letter_topic = topic, dead_letter_topic
        self._cond = threading.Condition()
        self._log: list[tuple[bytes, bytes]] = []  # (key, value)
        self._dead: list[DeadLetter] = []
        self._subscriptions: dict[tuple[str, str], _InProcessSubscription] = {}
        self._closing = False  # no new subscriptions; consumers stopping
        self._closed = False  # no more publishing

    # publishing
    def publish(self, event: events_pb2.Event) -> None:
        _check_publishable(event)
        self.publish_raw(event.job_id.encode("utf-8"), event.SerializeToString())

    def publish_raw(self, key: bytes | None, value: bytes) -> None:
        with self._cond:
            if self._closed:
                raise Unavailable("the in-process event bus is closed")
            self._log.append((key or b"", bytes(value)))
            self._cond.notify_all()

    # consuming
    def _start(self, topic: str, group: str, source: list, deliver: Callable[[int, object], None],
               stopping: threading.Event) -> None:
        with self._cond:
            if self._closing:
                raise Unavailable("the in-process event bus is closed")
            if (topic, group) in self._subscriptions:
                raise ValueError(f"group {group!r} already subscribed to {topic!r} on this bus")
            subscription = _InProcessSubscription(self, group, source, deliver, self.backoff_s, stopping)
            self._subscriptions[(topic, group)] = subscription
        subscription.thread.start()

    def subscribe(self, group: str, handler: Handler, kinds: Iterable[str] | None = None, *,
                  outage_window_s: float | None = None) -> None:
        stopping = threading.Event()
        delivery = _Delivery(group, handler, _check_kinds(kinds), self.processed, self.max_attempts,
                             self.backoff_s, stopping, _window(outage_window_s, self.outage_window_s))

        def deliver(offset: int, entry: object) -> None:
            key, value = entry
            result = delivery.process(value, {"topic": self.topic, "offset": offset})
            if result.outcome is _Outcome.DEAD:
                letter = DeadLetter(value, key, result.reason, group, result.attempts, self.topic, 0, offset)
                with self._cond:
                    self._dead.append(letter)
                    self._cond.notify_all()
                delivery.settle_dead(result)

        self._start(self.topic, group, self._log, deliver, stopping)

    def subscribe_dead_letters(self, group: str, handler: DeadLetterHandler) -> None:
        def deliver(offset: int, letter: object) -> None:
            try:
                handler(letter)
            except Exception:  # noqa: BLE001 - nothing sensible to retry on a dead letter
                log.exception("dead-letter handler failed; skipping the letter",
                              extra={"group": group, "offset": offset})

        self._start(self.dead_letter_topic, group, self._dead, deliver, threading.Event())

    def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter so far (a snapshot)."""
        with self._cond:
            return list(self._dead)

    def drain(self, timeout: float = 10.0) -> None:
        """Waits until every group has processed everything published so far, including events
        its handlers published meanwhile. Raises TimeoutError naming the groups still behind."""
        if threading.current_thread().name.startswith(THREAD_PREFIX + "-"):
            raise RuntimeError("drain() called from an event handler would wait for itself")
        with self._cond:
            drained = self._cond.wait_for(
                lambda: all(s.caught_up() for s in self._subscriptions.values()), timeout)
            if not drained:
                behind = {group: len(s.source) - s.cursor for (_, group), s in self._subscriptions.items()
                          if not s.caught_up()}
                raise TimeoutError(f"event bus not drained after {timeout}s; events left per group: {behind}")

    def ping(self) -> None:
        if self._closing:
            raise Unavailable("the in-process event bus is closed")

    def check_consumers(self) -> None:
        with self._cond:
            _check_alive(self._subscriptions, self._closing)

    def close(self, timeout: float = 10.0) -> None:
        """Stops every group once its in-flight handler returned (a handler may still publish
        until then); events not yet delivered are dropped with the bus."""
        with self._cond:
            self._closing = True
            subscriptions = list(self._subscriptions.values())
            for subscription in subscriptions:
                subscription.stopping.set()
            self._cond.notify_all()
        _join(subscriptions, time.monotonic() + timeout)
        with self._cond:
            self._closed = True


def _check_alive(subscriptions: dict, closing: bool) -> None:
    dead = sorted(group for (_, group), sub in subscriptions.items()
                  if sub.thread.ident is not None and not sub.thread.is_alive())
    if dead and not closing:
        raise RuntimeError(f"event consumer thread(s) died: {', '.join(dead)}")


def _join(subscriptions: list, deadline: float) -> None:
    current = threading.current_thread()
    for subscription in subscriptions:
        if subscription.thread is not current and subscription.thread.ident is not None:
            subscription.thread.join(max(0.0, deadline - time.monotonic()))
            if subscription.thread.is_alive():
                log.warning("consumer still busy after the close timeout; abandoning it",
                            extra={"group": subscription.group})


# --------------------------------------------------------------------------- Kafka adapter


class _KafkaSubscription:
    """One consumer (one thread) for one group on one topic. `handle(record)` does the work
    for a record; when it raises, the record is left uncommitted and retried after a backoff."""

    def __init__(self, bus: KafkaEventBus, group: str, topic: str, handle: Callable[[object], None],
                 stopping: threading.Event):
        self.bus, self.group, self.topic, self.handle = bus, group, topic, handle
        self.stopping = stopping
        self.thread = threading.Thread(target=self._run, name=f"{THREAD_PREFIX}-{group}", daemon=True)

    def _info(self, **more) -> dict:
        return {"group": self.group, "topic": self.topic, **more}

    def _run(self) -> None:
        backoff = _Backoff(self.bus.backoff_s)
        consumer = None
        try:
            while not self.stopping.is_set():
                pending: dict = {}  # partition -> offset of its first record not yet done
                try:
                    if consumer is None:
                        self.bus._ensure_topics()
                        consumer = self.bus._new_consumer(self.group, self.topic)
                        log.info("consumer started", extra=self._info())
                    batch = consumer.poll(timeout_ms=self.bus.poll_timeout_ms)
                    pending = {tp: records[0].offset for tp, records in batch.items() if records}
                    for tp, records in batch.items():
                        for record in records:
                            if self.stopping.is_set():
                                return
                            if tp not in consumer.assignment():
                                log.info("partition revoked mid-batch; its new owner resumes from the "
                                         "last commit", extra=self._info(partition=tp.partition))
                                break
                            self.handle(record)
                            pending[tp] = record.offset + 1
                            self._commit(consumer, TopicPartition(record.topic, record.partition), record)
                        pending.pop(tp, None)
                    backoff.reset()
                except _Stopping:
                    return
                except Exception as exc:  # noqa: BLE001 - survive broker/store hiccups: back off, retry
                    delay = backoff.next()
                    log.warning("event consumer error (%s); retrying in %.1fs", _reason(exc), delay,
                                extra=self._info(), exc_info=backoff.failures == 1)
                    consumer = self._rewind(consumer, pending, exc)
                    self.stopping.wait(delay)
        finally:
            if consumer is not None:
                try:
                    consumer.close(autocommit=False, timeout_ms=self.bus.close_timeout_ms)
                except Exception:  # noqa: BLE001
                    log.warning("error closing the consumer", extra=self._info(), exc_info=True)
            log.info("consumer stopped", extra=self._info())

    def _commit(self, consumer, tp, record) -> None:
        epoch = record.leader_epoch if record.leader_epoch is not None else -1
        try:
            consumer.commit({tp: OffsetAndMetadata(record.offset + 1, "", epoch)},
                            timeout_ms=self.bus.commit_timeout_ms)
        except Exception as exc:
            # Processed and marked but not committed: the event may be delivered again after a
            # rebalance or restart, and is then skipped as a duplicate.
            raise RuntimeError(
                f"commit of offset {record.offset + 1} on {tp} failed: {_reason(exc)}") from exc

    def _rewind(self, consumer, pending: dict, exc: Exception):
        """Puts each partition back on its first record not done, so nothing fetched is lost;
        a consumer that is no longer usable is closed and made again on the next round."""
        if consumer is None:
            return None
        if isinstance(exc, IllegalStateError):
            try:
                consumer.close(autocommit=False, timeout_ms=self.bus.close_timeout_ms)
            except Exception:  # noqa: BLE001
                pass
            return None
        assigned = consumer.assignment()
        for tp, offset in pending.items():
            if tp in assigned:
                try:
                    consumer.seek(tp, offset)
                except Exception:  # noqa: BLE001 - revoked meanwhile: the new owner resumes from the commit
                    log.debug("could not rewind", extra=self._info(partition=tp.partition), exc_info=True)
        return consumer


class KafkaEventBus(EventBus):
    """Distributed mode. Nothing here touches the network until first used: an unreachable
    broker shows in `ping()` (readiness) and in `publish()` raising Unavailable, and the
    consumer threads keep retrying with backoff until it is back."""

    def __init__(self, bootstrap: str, *, client_id: str, processed: ProcessedEvents | None = None,
                 topic: str = EVENTS_TOPIC, dead_letter_topic: str = DEAD_LETTER_TOPIC, max_attempts: int = 3,
                 backoff_s: float = 0.5, partitions: int = 3, replication_factor: int = 1,
                 session_timeout_ms: int = 10_000, heartbeat_interval_ms: int = 3_000,
                 max_poll_interval_ms: int = 300_000, max_poll_records: int = 100, poll_timeout_ms: int = 500,
                 publish_timeout_s: float = 15.0, request_timeout_ms: int = 5_000,
                 commit_timeout_ms: int = 10_000, close_timeout_ms: int = 5_000,
                 outage_window_s: float = DEFAULT_OUTAGE_WINDOW_S):
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.outage_window_s = _window(outage_window_s, 0)
        self.bootstrap, self.client_id = bootstrap, client_id
        self.processed = processed if processed is not None else InMemoryProcessedEvents()
        self.topic, self.dead_letter_topic = topic, dead_letter_topic
        self.max_attempts, self.backoff_s = max_attempts, backoff_s
        self.partitions, self.replication_factor = partitions, replication_factor
        self.session_timeout_ms, self.heartbeat_interval_ms = session_timeout_ms, heartbeat_interval_ms
        self.max_poll_interval_ms, self.max_poll_records = max_poll_interval_ms, max_poll_records
        self.poll_timeout_ms, self.publish_timeout_s = poll_timeout_ms, publish_timeout_s
        self.request_timeout_ms, self.commit_timeout_ms = request_timeout_ms, commit_timeout_ms
        self.close_timeout_ms = close_timeout_ms
        self._lock = threading.RLock()
        self._producer = None
        self._admin = None
        self._topics_ready = False
        self._subscriptions: dict[tuple[str, str], _KafkaSubscription] = {}
        self._closing = False  # no new subscriptions; consumers stopping
        self._closed = False  # producer gone: no more publishing

    # clients, made on first use
    def _bootstrap_timeout_ms(self) -> int:
        return max(1000, min(int(self.publish_timeout_s * 1000), 10_000))

    def _check_reachable(self) -> None:
        """Raises Unavailable unless some bootstrap server accepts a TCP connection. Checked
        before making a client because kafka-python 3.0.12 leaks the IO thread of a consumer or
        admin client whose constructor fails to bootstrap: retrying against a broker that is
        down would otherwise leave a thread behind at every attempt."""
        problems = []
        for server in self.bootstrap.split(","):
            host, _, port = server.strip().rpartition(":")
            try:
                with socket.create_connection((host.strip("[]") or "localhost", int(port or 9092)),
                                              timeout=min(2.0, self._bootstrap_timeout_ms() / 1000)):
                    return
            except (OSError, ValueError) as exc:
                problems.append(f"{server.strip()}: {exc}")
        raise Unavailable(f"cannot reach Kafka at {self.bootstrap} ({'; '.join(problems)})")

    def _get_producer(self):
        with self._lock:
            if self._closed:
                raise Unavailable("the Kafka event bus is closed")
            if self._producer is None:
                timeout_ms = int(self.publish_timeout_s * 1000)
                self._check_reachable()
                try:
                    self._producer = KafkaProducer(
                        bootstrap_servers=self.bootstrap, client_id=f"{self.client_id}-producer",
                        acks="all", enable_idempotence=True, retries=2**31 - 1, linger_ms=0,
                        request_timeout_ms=min(self.request_timeout_ms, timeout_ms),
                        delivery_timeout_ms=timeout_ms, max_block_ms=timeout_ms,
                        bootstrap_timeout_ms=self._bootstrap_timeout_ms())
                except Exception as exc:
                    raise Unavailable(f"cannot reach Kafka at {self.bootstrap}: {_reason(exc)}") from exc
            return self._producer

    def _get_admin(self):
        with self._lock:
            if self._admin is None:
                self._check_reachable()
                self._admin = KafkaAdminClient(
                    bootstrap_servers=self.bootstrap, client_id=f"{self.client_id}-admin",
                    request_timeout_ms=self.request_timeout_ms,
                    bootstrap_timeout_ms=self._bootstrap_timeout_ms())
            return self._admin

    def _drop_admin(self) -> None:
        with self._lock:
            admin, self._admin = self._admin, None
        if admin is not None:
            try:
                admin.close()
            except Exception:  # noqa: BLE001
                pass

    def _ensure_topics(self) -> None:
        """Creates the event and dead-letter topics when missing (once per bus)."""
        with self._lock:
            if self._topics_ready:
                return
            try:
                admin = self._get_admin()
                spec = {"num_partitions": self.partitions, "replication_factor": self.replication_factor}
                wanted = {name: dict(spec) for name in (self.topic, self.dead_letter_topic)}
                result = admin.create_topics(wanted, timeout_ms=self.request_timeout_ms, raise_errors=False)
                created = []
                for topic in result.get("topics", []):
                    code = topic.get("error_code", 0)
                    error = for_code(code)
                    if code == 0:
                        created.append(topic["name"])
                    elif issubclass(error, AuthorizationError):
                        # A managed cluster where topics are provisioned by its operators.
                        log.warning("not allowed to create topic %s; assuming it is provisioned",
                                    topic["name"])
                    elif error is not TopicAlreadyExistsError:
                        problem = topic.get("error_message") or error.__name__
                        raise error(f"creating topic {topic['name']!r}: {problem}")
                if created:
                    admin.wait_for_topics(created, timeout_ms=max(self.request_timeout_ms, 10_000))
                    log.info("created topics", extra={"topics": created, "partitions": self.partitions,
                                                      "replication_factor": self.replication_factor})
            except Exception:
                self._drop_admin()
                raise
            self._topics_ready = True

    def _new_consumer(self, group: str, topic: str):
        self._check_reachable()
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap, client_id=f"{self.client_id}-{group}", group_id=group,
            enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=self.session_timeout_ms, heartbeat_interval_ms=self.heartbeat_interval_ms,
            max_poll_interval_ms=self.max_poll_interval_ms, max_poll_records=self.max_poll_records,
            bootstrap_timeout_ms=self._bootstrap_timeout_ms())
        # Load the topic's partitions before joining. Otherwise the first assignment can be made
        # without them and a metadata-triggered second rebalance follows, which kafka-python
        # 3.0.12 may never complete when poll() times out during it: the leader's snapshot makes
        # need_rejoin() false mid-join, the SyncGroup result is never applied, the consumer keeps
        # no partitions and spins. Loading first also saves a rebalance at every start.
        try:
            if not consumer.partitions_for_topic(topic):
                log.warning("no partition metadata for the topic yet; subscribing anyway",
                            extra={"group": group, "topic": topic})
            consumer.subscribe([topic], listener=_RebalanceLog(group))
        except Exception:
            consumer.close(autocommit=False, timeout_ms=self.close_timeout_ms)
            raise
        return consumer

    # publishing
    def _send(self, topic: str, key: bytes | None, value: bytes, headers: list | None = None) -> None:
        producer = self._get_producer()
        try:
            self._ensure_topics()
            future = producer.send(topic, key=key, value=value, headers=headers)
            future.get(timeout=self.publish_timeout_s + 1)
        except Unavailable:
            raise
        except Exception as exc:
            raise Unavailable(f"Kafka at {self.bootstrap} did not acknowledge the message on {topic!r}: "
                              f"{_reason(exc)}") from exc

    def publish(self, event: events_pb2.Event) -> None:
        _check_publishable(event)
        self._send(self.topic, event.job_id.encode("utf-8"), event.SerializeToString())

    def publish_raw(self, key: bytes | None, value: bytes) -> None:
        self._send(self.topic, key, value)

    # consuming
    def _start(self, group: str, topic: str, handle: Callable[[object], None],
               stopping: threading.Event) -> None:
        with self._lock:
            if self._closing:
                raise Unavailable("the Kafka event bus is closed")
            if (topic, group) in self._subscriptions:
                raise ValueError(f"group {group!r} already subscribed to {topic!r} on this bus")
            subscription = _KafkaSubscription(self, group, topic, handle, stopping)
            self._subscriptions[(topic, group)] = subscription
        subscription.thread.start()

    def subscribe(self, group: str, handler: Handler, kinds: Iterable[str] | None = None, *,
                  outage_window_s: float | None = None) -> None:
        stopping = threading.Event()
        delivery = _Delivery(group, handler, _check_kinds(kinds), self.processed, self.max_attempts,
                             self.backoff_s, stopping, _window(outage_window_s, self.outage_window_s))

        def handle(record) -> None:
            result = delivery.process(record.value, {"topic": record.topic, "partition": record.partition,
                                                     "offset": record.offset})
            if result.outcome is _Outcome.DEAD:
                letter = DeadLetter(record.value or b"", record.key, result.reason, group, result.attempts,
                                    record.topic, record.partition, record.offset)
                self._send(self.dead_letter_topic, record.key, letter.value, letter.headers())
                log.warning("message sent to the dead-letter topic", extra={
                    "group": group, "topic": record.topic, "partition": record.partition,
                    "offset": record.offset, "dead_letter_topic": self.dead_letter_topic,
                    "reason": result.reason})
                delivery.settle_dead(result)

        self._start(group, self.topic, handle, stopping)

    def subscribe_dead_letters(self, group: str, handler: DeadLetterHandler) -> None:
        def handle(record) -> None:
            try:
                handler(DeadLetter.from_record(record.value, record.key, record.headers))
            except Exception:  # noqa: BLE001 - nothing sensible to retry on a dead letter
                log.exception("dead-letter handler failed; skipping the letter",
                              extra={"group": group, "partition": record.partition, "offset": record.offset})

        self._start(group, self.dead_letter_topic, handle, threading.Event())

    def check_consumers(self) -> None:
        with self._lock:
            _check_alive(self._subscriptions, self._closing)

    def ping(self) -> None:
        if self._closing:
            raise Unavailable("the Kafka event bus is closed")
        try:
            self._get_admin().describe_cluster()
        except Unavailable:
            raise
        except Exception as exc:
            self._drop_admin()
            raise Unavailable(f"cannot reach Kafka at {self.bootstrap}: {_reason(exc)}") from exc

    def close(self, timeout: float = 10.0) -> None:
        """Stops the consumers once their in-flight handler returned (each commits what it
        finished; a handler may still publish until then), then flushes and closes the producer."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._closing:
                return
            self._closing = True
            subscriptions = list(self._subscriptions.values())
        for subscription in subscriptions:
            subscription.stopping.set()
        _join(subscriptions, deadline)
        with self._lock:
            self._closed = True
            producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.flush(timeout=max(0.1, deadline - time.monotonic()))
                producer.close(timeout=max(0.1, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001
                log.warning("error flushing or closing the producer", exc_info=True)
        self._drop_admin()


class _RebalanceLog(ConsumerRebalanceListener):
    """Offsets are committed after every message, so there is nothing to commit when partitions
    are revoked; a message in flight during a rebalance is redelivered and then deduplicated."""

    def __init__(self, group: str):
        self.group = group

    def on_partitions_revoked(self, revoked) -> None:
        if revoked:
            log.info("partitions revoked", extra={"group": self.group, "partitions": _names(revoked)})

    def on_partitions_assigned(self, assigned) -> None:
        log.info("partitions assigned", extra={"group": self.group, "partitions": _names(assigned)})

    def on_partitions_lost(self, lost) -> None:
        log.warning("partitions lost (session expired); they will be redelivered to their new owner",
                    extra={"group": self.group, "partitions": _names(lost)})


def _names(partitions) -> list[str]:
    return sorted(f"{tp.topic}/{tp.partition}" for tp in partitions)
