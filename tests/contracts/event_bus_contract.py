"""The one contract every EventBus adapter passes (in-process and Kafka alike).

A subclass provides two fixtures:
  - `bus`: a fresh bus with max_attempts=3 and a short backoff, on topics no other test uses;
  - `make_group`: returns a new, unique consumer-group name on each call.
Tests wait by polling (never by `drain`), so the same test runs against a real broker.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from classforge.v1 import events_pb2
from services.common.errors import InvalidArgument, Unavailable
from services.common.events import THREAD_PREFIX, DeadLetter, new_event, payload_kind


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Recorder:
    """A handler that records what it got; `fail` decides per event whether to raise."""

    def __init__(self, fail=None):
        self.events: list[events_pb2.Event] = []
        self.calls: dict[str, int] = {}
        self.fail = fail
        self._lock = threading.Lock()

    def __call__(self, event: events_pb2.Event) -> None:
        with self._lock:
            self.calls[event.event_id] = self.calls.get(event.event_id, 0) + 1
            attempt = self.calls[event.event_id]
        if self.fail is not None and self.fail(event, attempt):
            raise RuntimeError(f"boom on {event.event_id} (attempt {attempt})")
        with self._lock:
            self.events.append(event)

    def ids(self) -> list[str]:
        with self._lock:
            return [e.event_id for e in self.events]

    def has(self, event_id: str) -> bool:
        return event_id in self.ids()


def progress(job_id: str, step: int) -> events_pb2.Event:
    return new_event(job_id, "contract", training_progress=events_pb2.TrainingProgress(step=step))


def cancel(job_id: str, reason: str = "because") -> events_pb2.Event:
    return new_event(job_id, "contract", cancel_requested=events_pb2.CancelRequested(reason=reason))


def job() -> str:
    return f"job-{uuid.uuid4().hex[:8]}"


class EventBusContract:
    timeout = 30.0

    def test_publish_delivers_an_equal_event(self, bus, make_group):
        got = Recorder()
        bus.subscribe(make_group(), got)
        event = new_event(job(), "contract", job_submitted=events_pb2.JobSubmitted())
        bus.publish(event)
        wait_until(lambda: got.has(event.event_id), self.timeout, "the event")
        assert got.events == [event]
        assert payload_kind(got.events[0]) == "job_submitted"

    def test_order_per_job_is_kept(self, bus, make_group):
        got = Recorder()
        bus.subscribe(make_group(), got)
        jobs = [job(), job()]
        for step in range(50):
            for job_id in jobs:
                bus.publish(progress(job_id, step))
        wait_until(lambda: len(got.ids()) == 100, self.timeout, "100 events")
        for job_id in jobs:
            assert [e.training_progress.step for e in got.events if e.job_id == job_id] == list(range(50))

    def test_every_group_gets_every_event(self, bus, make_group):
        first, second = Recorder(), Recorder()
        bus.subscribe(make_group(), first)
        bus.subscribe(make_group(), second)
        sent = [progress(job(), step) for step in range(10)]
        for event in sent:
            bus.publish(event)
        for got in (first, second):
            wait_until(lambda got=got: len(got.ids()) == len(sent), self.timeout, "every event in each group")
            assert sorted(got.ids()) == sorted(e.event_id for e in sent)

    def test_kinds_filter_skips_other_payloads(self, bus, make_group):
        got = Recorder()
        bus.subscribe(make_group(), got, kinds=["cancel_requested"])
        job_id = job()
        bus.publish(new_event(job_id, "contract", job_submitted=events_pb2.JobSubmitted()))
        bus.publish(cancel(job_id, "first"))
        bus.publish(progress(job_id, 1))
        bus.publish(cancel(job_id, "last"))
        wait_until(lambda: len(got.ids()) == 2, self.timeout, "both cancel requests")
        assert [e.cancel_requested.reason for e in got.events] == ["first", "last"]

    def test_subscribe_rejects_unknown_kinds(self, bus, make_group):
        with pytest.raises(ValueError, match="cancel_requestd"):
            bus.subscribe(make_group(), Recorder(), kinds=["cancel_requestd"])

    def test_a_group_subscribes_once_per_bus(self, bus, make_group):
        group = make_group()
        bus.subscribe(group, Recorder())
        with pytest.raises(ValueError, match=group):
            bus.subscribe(group, Recorder())

    def test_duplicate_event_id_is_handled_once_per_group(self, bus, make_group):
        first, second = Recorder(), Recorder()
        bus.subscribe(make_group(), first)
        bus.subscribe(make_group(), second)
        job_id = job()
        event, sentinel = progress(job_id, 1), progress(job_id, 2)
        bus.publish(event)
        bus.publish(event)
        bus.publish(sentinel)  # same job, so it arrives after both copies
        for got in (first, second):
            wait_until(lambda got=got: got.has(sentinel.event_id), self.timeout, "the sentinel")
            assert got.ids() == [event.event_id, sentinel.event_id]
            assert got.calls[event.event_id] == 1

    def test_a_handler_failing_once_is_retried(self, bus, make_group):
        got = Recorder(fail=lambda event, attempt: attempt == 1)
        bus.subscribe(make_group(), got)
        event = progress(job(), 1)
        bus.publish(event)
        wait_until(lambda: got.has(event.event_id), self.timeout, "the retried event")
        assert got.calls[event.event_id] == 2

    def test_a_handler_always_failing_dead_letters_the_message_and_moves_on(self, bus, make_group):
        job_id = job()
        bad, good = progress(job_id, 1), progress(job_id, 2)
        got = Recorder(fail=lambda event, attempt: event.event_id == bad.event_id)
        letters: list[DeadLetter] = []
        group = make_group()
        bus.subscribe(group, got)
        bus.subscribe_dead_letters(make_group(), letters.append)
        bus.publish(bad)
        bus.publish(good)
        wait_until(lambda: got.has(good.event_id), self.timeout, "the event after the failing one")
        wait_until(lambda: len(letters) == 1, self.timeout, "the dead letter")
        assert got.calls[bad.event_id] == bus.max_attempts
        assert got.ids() == [good.event_id]
        letter = letters[0]
        assert letter.event() == bad
        assert letter.key == job_id.encode()
        assert letter.reason.startswith("RuntimeError: boom on " + bad.event_id), letter.reason
        assert letter.group == group
        assert letter.attempts == bus.max_attempts
        assert letter.source_topic == bus.topic and letter.source_offset >= 0

    def test_an_outage_shorter_than_the_window_is_ridden_out_past_max_attempts(self, bus, make_group):
        outage = bus.max_attempts + 2  # more Unavailable failures than max_attempts allows other faults

        def down_for_a_while(event, attempt):
            if attempt <= outage:
                raise Unavailable("object store at test:1 cannot be reached")
            return False

        got = Recorder(fail=down_for_a_while)
        bus.subscribe(make_group(), got, outage_window_s=60)
        event = progress(job(), 1)
        bus.publish(event)
        wait_until(lambda: got.has(event.event_id), self.timeout + 30, "the event after the outage")
        assert got.calls[event.event_id] == outage + 1

    def test_an_outage_longer_than_the_window_dead_letters_with_the_reason(self, bus, make_group):
        def always_down(event, attempt):
            raise Unavailable("object store at test:1 cannot be reached")

        got = Recorder(fail=always_down)
        letters: list[DeadLetter] = []
        group = make_group()
        bus.subscribe(group, got, outage_window_s=0.3)
        bus.subscribe_dead_letters(make_group(), letters.append)
        event = progress(job(), 1)
        bus.publish(event)
        wait_until(lambda: any(letter.event() == event for letter in letters), self.timeout, "the dead letter")
        (letter,) = [letter for letter in letters if letter.event() == event]
        assert letter.reason.startswith("Unavailable: object store at test:1"), letter.reason
        assert letter.group == group and got.calls[event.event_id] >= 2

    def test_a_consumer_thread_that_died_shows_in_readiness(self, bus, make_group):
        bus.check_consumers()  # nothing subscribed: healthy

        def dies(event):
            raise SystemExit("the consumer thread ends here")  # not an Exception: escapes every retry

        group = make_group()
        bus.subscribe(group, dies)
        bus.publish(progress(job(), 1))

        def dead() -> bool:
            try:
                bus.check_consumers()
            except RuntimeError as exc:
                return group in str(exc)
            return False

        wait_until(dead, self.timeout, "readiness to report the dead consumer")

    def test_an_unparseable_message_is_dead_lettered(self, bus, make_group):
        got = Recorder()
        letters: list[DeadLetter] = []
        group = make_group()
        bus.subscribe(group, got)
        bus.subscribe_dead_letters(make_group(), letters.append)
        job_id = job()
        bus.publish_raw(job_id.encode(), b"\xff\xff not an event")
        after = progress(job_id, 1)
        bus.publish(after)
        wait_until(lambda: got.has(after.event_id), self.timeout, "the event after the garbage")
        wait_until(lambda: len(letters) == 1, self.timeout, "the dead letter")
        assert letters[0].value == b"\xff\xff not an event"
        assert letters[0].reason.startswith("unparseable: ")
        assert letters[0].event() is None
        assert letters[0].group == group and letters[0].attempts == 0

    def test_a_handler_may_publish(self, bus, make_group):
        got = Recorder()
        group = make_group()

        def chain(event: events_pb2.Event) -> None:
            got(event)
            if event.training_progress.step < 3:
                bus.publish(progress(event.job_id, event.training_progress.step + 1))

        bus.subscribe(group, chain)
        bus.publish(progress(job(), 0))
        wait_until(lambda: len(got.ids()) == 4, self.timeout, "the chain of events")
        assert [e.training_progress.step for e in got.events] == [0, 1, 2, 3]

    def test_publish_needs_an_event_id(self, bus):
        with pytest.raises(InvalidArgument, match="event_id"):
            bus.publish(events_pb2.Event(job_id="job-1"))

    def test_ping(self, bus):
        bus.ping()

    def test_close_waits_for_the_handler_in_flight(self, bus, make_group):
        started, finished = threading.Event(), threading.Event()

        def slow(event: events_pb2.Event) -> None:
            if event.training_progress.step != 1:
                return
            started.set()
            time.sleep(0.5)
            bus.publish(progress(event.job_id, 2))  # a handler still publishes while the bus closes
            finished.set()

        group = make_group()
        bus.subscribe(group, slow)
        bus.publish(progress(job(), 1))
        assert started.wait(self.timeout), "the handler never started"
        bus.close()
        assert finished.is_set(), "close() returned before the in-flight handler finished"
        assert not [t for t in threading.enumerate() if t.name == f"{THREAD_PREFIX}-{group}"]
        bus.close()  # a second close is harmless
        with pytest.raises(Unavailable):
            bus.publish(progress(job(), 2))
        with pytest.raises(Unavailable):
            bus.ping()
