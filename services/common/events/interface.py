"""The event bus interface: how services talk to each other (design, "Contracts": Kafka).

The Kafka key is the job id, so the events of a job keep their order. Two adapters share one
contract (tests/contracts/event_bus_contract.py):

- `KafkaEventBus` (distributed mode, `services.common.events.kafka`): kafka-python, producer with
  acks=all and idempotence, one consumer per subscription, offsets committed synchronously after
  the work is done.
- `InProcessEventBus` (embedded mode, `services.common.events.inprocess`): one append-only log in
  memory, one thread per consumer group, the same dedup / retry / dead-letter rules
  (`services.common.events.delivery`).

Both replay the topic from the beginning for a group that has never consumed
(Kafka: auto_offset_reset=earliest), so a service that subscribes late misses nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable

from classforge.v1 import events_pb2
from services.common.events.delivery import DeadLetter

EVENTS_TOPIC = "classforge.events"
DEAD_LETTER_TOPIC = "classforge.events.dlq"

Handler = Callable[[events_pb2.Event], None]
DeadLetterHandler = Callable[[DeadLetter], None]


class EventBus(ABC):
    """Publish events; deliver them to consumer groups (one group per service)."""

    max_attempts: int
    topic: str
    dead_letter_topic: str

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
