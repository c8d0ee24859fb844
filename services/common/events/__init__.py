"""The event bus: how services talk to each other (design, "Contracts": Kafka).

- `envelope`: building and reading events (`new_event`, `payload_kind`);
- `interface`: the `EventBus` every service codes against;
- `delivery`: the rules both adapters share (dedup log, retries, dead letters);
- `inprocess`: embedded mode's bus, in memory;
- `kafka`: distributed mode's bus. Not imported here, so that building an event never loads
  kafka-python: the composition roots import `services.common.events.kafka` themselves.
"""

from services.common.events.delivery import (
    DEFAULT_OUTAGE_WINDOW_S,
    THREAD_PREFIX,
    DeadLetter,
    InMemoryProcessedEvents,
    ObjectStoreProcessedEvents,
    ProcessedEvents,
)
from services.common.events.envelope import PAYLOAD_KINDS, new_event, payload_kind
from services.common.events.inprocess import InProcessEventBus
from services.common.events.interface import (
    DEAD_LETTER_TOPIC,
    EVENTS_TOPIC,
    DeadLetterHandler,
    EventBus,
    Handler,
)

__all__ = [
    "DEAD_LETTER_TOPIC", "DEFAULT_OUTAGE_WINDOW_S", "EVENTS_TOPIC", "PAYLOAD_KINDS", "THREAD_PREFIX",
    "DeadLetter", "DeadLetterHandler", "EventBus", "Handler", "InMemoryProcessedEvents", "InProcessEventBus",
    "ObjectStoreProcessedEvents", "ProcessedEvents", "new_event", "payload_kind",
]
