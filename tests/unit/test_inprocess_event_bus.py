"""The event-bus contract on the in-process adapter (embedded mode), plus what only the
in-process side and the shared helpers (new_event, the dedup logs) need."""

from __future__ import annotations

import itertools
import threading

import pytest

from classforge.v1 import common_pb2, events_pb2
from services.common.events import (
    InMemoryProcessedEvents,
    InProcessEventBus,
    ObjectStoreProcessedEvents,
    ProcessedEvents,
    new_event,
    payload_kind,
)
from services.common.storage import LocalObjectStore
from tests.contracts.event_bus_contract import EventBusContract, Recorder, progress, wait_until

_groups = itertools.count()


@pytest.fixture
def make_group():
    return lambda: f"group-{next(_groups)}"


class TestInProcessEventBus(EventBusContract):
    timeout = 5.0

    @pytest.fixture
    def bus(self):
        bus = InProcessEventBus(InMemoryProcessedEvents(), max_attempts=3, backoff_s=0.01)
        yield bus
        bus.close()


class TestInProcessEventBusWithObjectStoreDedup(EventBusContract):
    """Same contract with the durable dedup log the distributed services use."""

    timeout = 5.0

    @pytest.fixture
    def bus(self, tmp_path):
        bus = InProcessEventBus(ObjectStoreProcessedEvents(LocalObjectStore(tmp_path / "store")),
                                max_attempts=3, backoff_s=0.01)
        yield bus
        bus.close()


# ---------------------------------------------------------------- new_event / payload_kind


def test_new_event_fills_id_time_and_one_payload():
    spec = common_pb2.JobSpec(source=common_pb2.DataSource(local_path="/data"))
    event = new_event("job-1", "jobs", job_submitted=events_pb2.JobSubmitted(spec=spec))
    other = new_event("job-1", "jobs", job_submitted=events_pb2.JobSubmitted(spec=spec))
    assert event.event_id and event.event_id != other.event_id and len(event.event_id) == 36
    assert event.job_id == "job-1" and event.producer == "jobs"
    assert event.occurred_at.seconds > 1_600_000_000
    assert payload_kind(event) == "job_submitted" and event.job_submitted.spec == spec


def test_new_event_with_an_empty_payload_still_selects_it():
    event = new_event("j", "p", cancel_requested=events_pb2.CancelRequested())
    assert payload_kind(event) == "cancel_requested"
    assert payload_kind(events_pb2.Event()) == ""


@pytest.mark.parametrize("payload", [
    {},
    {"job_submitted": events_pb2.JobSubmitted(), "cancel_requested": events_pb2.CancelRequested()},
    {"job_finished": events_pb2.JobSubmitted()},
    {"job_submitted": events_pb2.CancelRequested()},
])
def test_new_event_needs_exactly_one_valid_payload(payload):
    with pytest.raises(TypeError):
        new_event("job-1", "jobs", **payload)


# ---------------------------------------------------------------- dedup logs


def test_object_store_dedup_is_durable_and_uses_the_marker_layout(tmp_path):
    store = LocalObjectStore(tmp_path)
    processed = ObjectStoreProcessedEvents(store)
    assert not processed.seen("trainer", "e-1")
    processed.mark("trainer", "e-1")
    assert processed.seen("trainer", "e-1") and not processed.seen("evaluator", "e-1")
    assert store.exists("state/events/trainer/e-1")
    restarted = ObjectStoreProcessedEvents(LocalObjectStore(tmp_path))  # a new process, or another replica
    assert restarted.seen("trainer", "e-1") and not restarted.seen("trainer", "e-2")


def test_object_store_dedup_keeps_odd_ids_inside_its_prefix(tmp_path):
    store = LocalObjectStore(tmp_path)
    processed = ObjectStoreProcessedEvents(store)
    for odd in ["../../escape", "a/b", "", ".."]:
        key = processed.key("trainer", odd)
        assert key.startswith("state/events/trainer/") and key.count("/") == 3 and ".." not in key
        processed.mark("trainer", odd)
        assert ObjectStoreProcessedEvents(store).seen("trainer", odd)
    assert not (tmp_path.parent / "escape").exists()


def test_in_memory_dedup():
    processed = InMemoryProcessedEvents()
    processed.mark("g", "e")
    assert processed.seen("g", "e") and not processed.seen("h", "e")


# ---------------------------------------------------------------- in-process specifics


def test_a_late_group_gets_the_earlier_events():
    bus = InProcessEventBus()
    try:
        sent = [progress("job-1", step) for step in range(3)]
        for event in sent:
            bus.publish(event)
        got = Recorder()
        bus.subscribe("late", got)
        bus.drain(5)
        assert got.events == sent
    finally:
        bus.close()


def test_drain_waits_for_follow_up_events_and_times_out_when_stuck():
    bus = InProcessEventBus()
    release = threading.Event()
    try:
        got = Recorder()

        def chain(event):
            got(event)
            if event.training_progress.step < 5:
                bus.publish(progress(event.job_id, event.training_progress.step + 1))

        bus.subscribe("chain", chain)
        bus.publish(progress("job-1", 0))
        bus.drain(5)
        assert [e.training_progress.step for e in got.events] == [0, 1, 2, 3, 4, 5]

        bus.subscribe("stuck", lambda event: release.wait(10))
        bus.publish(progress("job-1", 9))
        with pytest.raises(TimeoutError, match="stuck"):
            bus.drain(0.2)
        release.set()
        bus.drain(5)
    finally:
        release.set()
        bus.close()


def test_handlers_get_their_own_copy():
    bus = InProcessEventBus()
    try:
        first, second = Recorder(), Recorder()
        bus.subscribe("mutator", lambda event: (event.ClearField("job_id"), first(event)))
        bus.subscribe("reader", second)
        event = progress("job-1", 1)
        bus.publish(event)
        bus.drain(5)
        assert second.events == [event] and event.job_id == "job-1"
    finally:
        bus.close()


class FlakyDedup(ProcessedEvents):
    """A dedup log whose store is down for the first `outages` calls."""

    def __init__(self, outages: int):
        self.inner, self.outages = InMemoryProcessedEvents(), outages

    def seen(self, group, event_id):
        if self.outages > 0:
            self.outages -= 1
            raise ConnectionError("object store down")
        return self.inner.seen(group, event_id)

    def mark(self, group, event_id):
        self.inner.mark(group, event_id)


def test_dedup_log_outage_is_retried_not_dead_lettered():
    bus = InProcessEventBus(FlakyDedup(outages=2), backoff_s=0.01)
    try:
        got = Recorder()
        bus.subscribe("g", got)
        event = progress("job-1", 1)
        bus.publish(event)
        wait_until(lambda: got.has(event.event_id), 5, "the event after the outage")
        bus.drain(5)
        assert got.calls[event.event_id] == 1 and bus.dead_letters() == []
    finally:
        bus.close()


def test_a_failing_dead_letter_handler_does_not_stop_its_group():
    bus = InProcessEventBus(backoff_s=0.01, max_attempts=1)
    try:
        bus.subscribe("always-fails", Recorder(fail=lambda event, attempt: True))
        seen = []

        def picky(letter):
            seen.append(letter)
            if len(seen) == 1:
                raise RuntimeError("cannot file the first letter")

        bus.subscribe_dead_letters("ops", picky)
        bus.publish(progress("job-1", 1))
        bus.publish(progress("job-1", 2))
        bus.drain(5)
        assert len(seen) == 2 and len(bus.dead_letters()) == 2
        assert all(letter.attempts == 1 for letter in seen)
    finally:
        bus.close()


def test_dead_letters_are_counted_per_group():
    from prometheus_client import REGISTRY

    from classforge.v1 import events_pb2
    from services.common.events import InProcessEventBus, new_event

    def before() -> float:
        return REGISTRY.get_sample_value("classforge_events_dead_letters_total", {"group": "doomed"}) or 0.0

    start = before()
    bus = InProcessEventBus(max_attempts=2, backoff_s=0.01)

    def always_fails(event):
        raise RuntimeError("cannot handle")

    bus.subscribe("doomed", always_fails)
    bus.publish(new_event("job-dl", "test", cancel_requested=events_pb2.CancelRequested()))
    bus.drain(5)
    bus.close()
    assert before() == start + 1
