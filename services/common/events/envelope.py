"""The event envelope: every message between services is one `classforge.v1.Event` carrying
exactly one payload (design, "Contracts"). Building and inspecting events needs nothing but the
generated protos, so every domain can do it without loading a bus adapter."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from classforge.v1 import events_pb2
from services.common.errors import InvalidArgument

#: Every payload kind, in field order: the names `kinds=` filters accept.
PAYLOAD_KINDS: tuple[str, ...] = tuple(
    field.name for field in events_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"].fields)


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


def check_kinds(kinds: Iterable[str] | None) -> frozenset[str] | None:
    """The payload kinds a subscription asked for (None: all); ValueError naming unknown ones."""
    if kinds is None:
        return None
    if isinstance(kinds, str):
        kinds = [kinds]
    chosen = frozenset(kinds)
    unknown = sorted(chosen - set(PAYLOAD_KINDS))
    if unknown:
        raise ValueError(f"unknown event kinds {unknown}; expected some of {', '.join(PAYLOAD_KINDS)}")
    return chosen


def check_publishable(event: events_pb2.Event) -> None:
    if not isinstance(event, events_pb2.Event):
        raise TypeError(f"publish() takes a classforge.v1.Event, got {type(event).__name__}")
    if not event.event_id:
        raise InvalidArgument("event.event_id",
                              "is empty; build events with services.common.events.new_event()")
