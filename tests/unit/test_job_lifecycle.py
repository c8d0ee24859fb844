"""Every job ends: dead letters, silent stages, unconfirmed cancels and bus errors, on the jobs
domain with the in-process bus and a controllable clock. The same rules run against the real
Kafka and MinIO in tests/faults/."""

import time

import pytest

from classforge.v1 import common_pb2, events_pb2
from services.common.errors import Unavailable
from services.common.events import DeadLetter, InProcessEventBus, new_event
from services.common.stage_work import Cancellations, JobCancelled, Stage
from services.jobs.domain import JobsDomain

Status = common_pb2.JobStatus
JobStage = common_pb2.JobStage


class Clock:
    """Starts at the wall clock (events carry real timestamps) and moves only when told."""

    def __init__(self):
        self.now = time.time() + 1

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def domain(bus, store, clock):
    domain = JobsDomain(bus, store, stage_deadline_s=60, cancel_grace_s=30, clock=clock)
    bus.subscribe("jobs", domain.apply)
    return domain


def spec() -> common_pb2.JobSpec:
    return common_pb2.JobSpec(source=common_pb2.DataSource(local_path="/data"))


def event_at(job_id: str, seconds: float, producer: str = "trainer", **payload) -> events_pb2.Event:
    event = new_event(job_id, producer, **payload)
    event.occurred_at.FromNanoseconds(int(seconds * 1e9))
    return event


def letter(event: events_pb2.Event, group: str, reason: str = "ValueError: poisoned") -> DeadLetter:
    return DeadLetter(event.SerializeToString(), event.job_id.encode(), reason, group, 3,
                      "classforge.events", 0, 7)


def test_a_dead_letter_fails_the_stage_of_the_group_that_gave_up(bus, domain):
    job_id = domain.submit(spec()).job_id
    bus.drain(5)
    poisoned = new_event(job_id, "tfrecords", records_built=events_pb2.RecordsBuilt(records_uri="x"))
    domain.apply_dead_letter(letter(poisoned, "trainer"))
    bus.drain(5)
    job = domain.get(job_id)
    assert job.status == Status.JOB_STATUS_FAILED and job.stage == JobStage.JOB_STAGE_TRAINING
    assert "the trainer service gave up on records_built after 3 attempt(s): ValueError: poisoned" in job.error


def test_a_dead_letter_for_an_ended_or_unknown_job_changes_nothing(bus, domain):
    job_id = domain.submit(spec()).job_id
    bus.drain(5)
    domain.apply(new_event(job_id, "evaluator", evaluation_completed=events_pb2.EvaluationCompleted(blessed=False)))
    assert domain.get(job_id).status == Status.JOB_STATUS_SUCCEEDED
    late = new_event(job_id, "evaluator", training_completed=events_pb2.TrainingCompleted())
    domain.apply_dead_letter(letter(late, "evaluator"))
    domain.apply_dead_letter(letter(new_event("someone-else", "x", training_completed=events_pb2.TrainingCompleted()),
                                    "evaluator"))
    bus.drain(5)
    assert domain.get(job_id).status == Status.JOB_STATUS_SUCCEEDED


def test_a_silent_stage_fails_the_job_after_its_deadline_naming_stage_and_last_heartbeat(bus, domain, clock):
    job_id = domain.submit(spec()).job_id
    bus.drain(5)
    beat = event_at(job_id, clock.now + 10, "tfrecords",
                    stage_heartbeat=events_pb2.StageHeartbeat(stage=JobStage.JOB_STAGE_RECORDS, activity="building"))
    domain.apply(beat)
    job = domain.get(job_id)
    assert (job.stage, job.status, job.activity) == (JobStage.JOB_STAGE_RECORDS, Status.JOB_STATUS_RUNNING,
                                                     "building")
    clock.now += 69  # 59 s after the heartbeat: still within the deadline
    assert domain.check_deadlines() == []
    clock.now += 2
    assert domain.check_deadlines() == [job_id]
    assert domain.check_deadlines() == []  # published once, however often the watchdog runs
    bus.drain(5)
    job = domain.get(job_id)
    assert job.status == Status.JOB_STATUS_FAILED and job.stage == JobStage.JOB_STAGE_RECORDS
    assert "no progress from the records stage within its 60s deadline" in job.error
    assert "(building)" in job.error and "tfrecords service" in job.error


def test_heartbeats_keep_a_long_stage_alive_and_are_not_kept_in_the_history(bus, domain, clock):
    job_id = domain.submit(spec()).job_id
    bus.drain(5)
    for i in range(1, 6):
        clock.now += 50
        domain.apply(event_at(job_id, clock.now, "ingest", stage_heartbeat=events_pb2.StageHeartbeat(
            stage=JobStage.JOB_STAGE_INGEST, activity=f"beat {i}")))
        assert domain.check_deadlines() == []
    assert domain.get(job_id).activity == "beat 5"
    assert [e.WhichOneof("payload") for e, _ in domain.watch(job_id, lambda: False)] == []
    history = [e.WhichOneof("payload") for e in domain._events[job_id]]
    assert history == ["job_submitted"]


def test_a_watcher_that_asks_gets_the_latest_heartbeat_live_with_its_count(bus, domain, clock):
    import threading

    job_id = domain.submit(spec()).job_id
    bus.drain(5)

    def beat(done: int) -> None:
        clock.now += 5
        domain.apply(event_at(job_id, clock.now, "ingest", stage_heartbeat=events_pb2.StageHeartbeat(
            stage=JobStage.JOB_STAGE_INGEST, activity="writing images", done=done, total=1000, unit="images")))

    beat(100)
    beat(200)  # only the latest beat is kept: a watcher starting now gets 200, not 100
    seen = []

    def watch() -> None:
        for event, _ in domain.watch(job_id, lambda: True, poll_seconds=0.05, heartbeats=True):
            seen.append((event.WhichOneof("payload"), event.stage_heartbeat.done))

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 5
        while len(seen) < count and time.monotonic() < deadline:
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    wait_for(2)
    beat(300)  # live: sent to the watcher as it comes
    wait_for(3)
    domain.apply(event_at(job_id, clock.now + 1, "ingest", stage_failed=events_pb2.StageFailed(
        stage=JobStage.JOB_STAGE_INGEST, message="disk full")))
    watcher.join(5)
    assert not watcher.is_alive()
    assert seen == [("job_submitted", 0), ("stage_heartbeat", 200), ("stage_heartbeat", 300), ("stage_failed", 0)]
    # Without asking, a watcher gets the history only, as before.
    assert [e.WhichOneof("payload") for e, _ in domain.watch(job_id, lambda: True)] == ["job_submitted",
                                                                                       "stage_failed"]


def test_a_job_queued_behind_a_busy_stage_waits_while_that_stage_is_alive(bus, domain, clock):
    busy, waiting = domain.submit(spec()).job_id, domain.submit(spec()).job_id
    bus.drain(5)
    for _ in range(4):  # ingest works on `busy` for 200 s; `waiting` has not started
        clock.now += 50
        domain.apply(event_at(busy, clock.now, "ingest", stage_heartbeat=events_pb2.StageHeartbeat(
            stage=JobStage.JOB_STAGE_INGEST, activity="preparing")))
        assert domain.check_deadlines() == []
    clock.now += 61  # ingest silent for everyone: both jobs fail
    assert sorted(domain.check_deadlines()) == sorted([busy, waiting])


def test_a_late_heartbeat_of_an_earlier_stage_does_not_move_the_job_back(bus, domain, clock):
    job_id = domain.submit(spec()).job_id
    bus.drain(5)
    domain.apply(event_at(job_id, clock.now + 1, "ingest", dataset_prepared=events_pb2.DatasetPrepared()))
    domain.apply(event_at(job_id, clock.now + 2, "ingest", stage_heartbeat=events_pb2.StageHeartbeat(
        stage=JobStage.JOB_STAGE_INGEST, activity="preparing")))
    assert domain.get(job_id).stage == JobStage.JOB_STAGE_RECORDS


def test_deadlines_restart_when_the_service_could_not_see_events(bus, domain, clock):
    job_id = domain.submit(spec()).job_id
    bus.drain(5)
    domain.lost_sight()  # e.g. Kafka was unreachable: the silence may be ours, not the stage's
    clock.now += 3600
    assert domain.check_deadlines() == []
    domain.regained_sight()
    clock.now += 59
    assert domain.check_deadlines() == []
    clock.now += 2
    assert domain.check_deadlines() == [job_id]


def test_a_watchdog_round_runs_deadlines_only_while_the_bus_and_store_answer(bus, store, domain, clock,
                                                                              monkeypatch):
    job_id = domain.submit(spec()).job_id
    bus.drain(5)

    def store_down():
        raise Unavailable("object store down")

    monkeypatch.setattr(store, "ping", store_down)
    clock.now += 3600
    domain.watchdog_round()  # blind: the silence may be ours
    bus.drain(5)
    assert domain.get(job_id).status != Status.JOB_STATUS_FAILED
    monkeypatch.undo()
    domain.watchdog_round()  # sees again: the deadline restarts from now
    clock.now += 61
    domain.watchdog_round()
    bus.drain(5)
    assert domain.get(job_id).status == Status.JOB_STATUS_FAILED


def test_a_fold_that_cannot_record_pauses_deadlines_until_it_can(bus, store, domain, clock, monkeypatch):
    job_id = domain.submit(spec()).job_id
    bus.drain(5)
    original = store.put_bytes

    def store_down(*args, **kwargs):
        raise Unavailable("object store down")

    monkeypatch.setattr(store, "put_bytes", store_down)
    with pytest.raises(Unavailable):
        domain.apply(event_at(job_id, clock.now, "ingest", dataset_prepared=events_pb2.DatasetPrepared()))
    clock.now += 3600
    assert domain.check_deadlines() == []
    monkeypatch.setattr(store, "put_bytes", original)
    domain.apply(event_at(job_id, clock.now - 3000, "ingest", dataset_prepared=events_pb2.DatasetPrepared()))
    clock.now += 59
    assert domain.check_deadlines() == []
    clock.now += 2
    assert domain.check_deadlines() == [job_id]


def test_cancel_writes_the_marker_then_ends_cancelled_when_the_stage_confirms(bus, store, domain):
    job_id = domain.submit(spec()).job_id
    bus.drain(5)
    domain.cancel(job_id, "wrong data")
    assert Cancellations(store).reason(job_id) == "wrong data"
    bus.drain(5)
    job = domain.get(job_id)
    assert job.status == Status.JOB_STATUS_PENDING and job.cancel_reason == "wrong data"
    again = domain.cancel(job_id)  # harmless while the stage stops
    assert again.cancel_reason == "wrong data"
    domain.apply(new_event(job_id, "ingest", job_cancelled=events_pb2.JobCancelled(stage=JobStage.JOB_STAGE_INGEST)))
    assert domain.get(job_id).status == Status.JOB_STATUS_CANCELLED
    assert domain.cancel(job_id).status == Status.JOB_STATUS_CANCELLED  # and after the end
    domain.apply(new_event(job_id, "evaluator", evaluation_completed=events_pb2.EvaluationCompleted(blessed=True)))
    assert domain.get(job_id).status == Status.JOB_STATUS_CANCELLED  # never SUCCEEDED later


def test_an_unconfirmed_cancel_ends_the_job_after_the_grace_period(bus, domain, clock):
    job_id = domain.submit(spec()).job_id
    bus.drain(5)
    domain.cancel(job_id)
    bus.drain(5)
    clock.now += 29
    assert domain.check_deadlines() == []
    clock.now += 2
    assert domain.check_deadlines() == [job_id]
    bus.drain(5)
    assert domain.get(job_id).status == Status.JOB_STATUS_CANCELLED


def test_a_bus_error_at_submit_says_retry_without_leaking_the_broker(store, caplog):
    class DownBus(InProcessEventBus):
        def publish(self, event):
            raise Unavailable("cannot reach Kafka at 10.1.2.3:9092 (MessageSizeTooLargeError)")

    domain = JobsDomain(DownBus(), store)
    with pytest.raises(Unavailable) as raised:
        domain.submit(spec(), request_id="r-1")
    assert "10.1.2.3" not in raised.value.message and "Kafka" not in raised.value.message
    assert "same request_id" in raised.value.message


def test_a_stage_sees_a_cancel_inside_its_work_and_says_it_stopped(bus, store):
    seen = []
    bus.subscribe("observer", seen.append)
    stage = Stage(bus, store, JobStage.JOB_STAGE_RECORDS, "tfrecords", heartbeat_seconds=60, check_seconds=0)
    with stage.working("job-1", "building") as work:
        work.check()  # nothing requested yet
        Cancellations(store).request("job-1", "stop")
        with pytest.raises(JobCancelled, match="stop"):
            work.check()
    with pytest.raises(JobCancelled):
        with stage.working("job-1"):
            pass
    stage.acknowledge_cancel("job-1")
    bus.drain(5)
    kinds = [e.WhichOneof("payload") for e in seen]
    assert kinds == ["stage_heartbeat", "job_cancelled"]
    assert seen[0].stage_heartbeat.activity == "building"
    assert seen[1].job_cancelled.stage == JobStage.JOB_STAGE_RECORDS
