"""Embedded mode's event bus: every service in one process, one append-only log in memory, with
the same dedup / retry / dead-letter rules as Kafka (services.common.events.delivery)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from classforge.v1 import events_pb2
from services.common.errors import Unavailable
from services.common.events.delivery import (
    DEFAULT_OUTAGE_WINDOW_S,
    THREAD_PREFIX,
    Backoff,
    DeadLetter,
    Delivery,
    InMemoryProcessedEvents,
    Outcome,
    ProcessedEvents,
    Stopping,
    check_consumers_alive,
    join_consumers,
    outage_window,
)
from services.common.events.envelope import check_kinds, check_publishable
from services.common.events.interface import (
    DEAD_LETTER_TOPIC,
    EVENTS_TOPIC,
    DeadLetterHandler,
    EventBus,
    Handler,
)

log = logging.getLogger("classforge.events")

class _InProcessSubscription:
    def __init__(self, bus: InProcessEventBus, group: str, source: list,
                 deliver: Callable[[int, object], None], backoff_s: float, stopping: threading.Event):
        self.bus, self.group, self.source, self.deliver = bus, group, source, deliver
        self.cursor = 0  # index of the next entry of `source` to deliver
        self.stopping = stopping
        self.backoff = Backoff(backoff_s, maximum=5.0)
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
            except Stopping:
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
        self.outage_window_s = outage_window(outage_window_s, 0)
        self.topic, self.dead_letter_topic = topic, dead_letter_topic
        self._cond = threading.Condition()
        self._log: list[tuple[bytes, bytes]] = []  # (key, value)
        self._dead: list[DeadLetter] = []
        self._subscriptions: dict[tuple[str, str], _InProcessSubscription] = {}
        self._closing = False  # no new subscriptions; consumers stopping
        self._closed = False  # no more publishing

    # publishing
    def publish(self, event: events_pb2.Event) -> None:
        check_publishable(event)
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
        delivery = Delivery(group, handler, check_kinds(kinds), self.processed, self.max_attempts,
                            self.backoff_s, stopping, outage_window(outage_window_s, self.outage_window_s))

        def deliver(offset: int, entry: object) -> None:
            key, value = entry
            result = delivery.process(value, {"topic": self.topic, "offset": offset})
            if result.outcome is Outcome.DEAD:
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
            check_consumers_alive(self._subscriptions, self._closing)

    def close(self, timeout: float = 10.0) -> None:
        """Stops every group once its in-flight handler returned (a handler may still publish
        until then); events not yet delivered are dropped with the bus."""
        with self._cond:
            self._closing = True
            subscriptions = list(self._subscriptions.values())
            for subscription in subscriptions:
                subscription.stopping.set()
            self._cond.notify_all()
        join_consumers(subscriptions, time.monotonic() + timeout)
        with self._cond:
            self._closed = True

