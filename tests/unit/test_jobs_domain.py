import pytest

from classforge.v1 import common_pb2, events_pb2
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.events import new_event
from services.jobs.domain import JobsDomain

Status = common_pb2.JobStatus
Stage = common_pb2.JobStage


def spec(deploy: bool = True) -> common_pb2.JobSpec:
    return common_pb2.JobSpec(source=common_pb2.DataSource(local_path="/data"),
                              deploy=common_pb2.DeployOptions(deploy=deploy))


def test_submit_publishes_job_submitted_with_the_spec(bus, store):
    seen = []
    bus.subscribe("observer", seen.append)
    job = JobsDomain(bus, store).submit(spec())
    bus.drain(5)
    assert [e.job_id for e in seen] == [job.job_id]
    assert seen[0].WhichOneof("payload") == "job_submitted"
    assert seen[0].job_submitted.spec == spec()
    assert seen[0].producer == "jobs"


def test_submit_with_the_same_request_id_is_idempotent(bus, store):
    seen = []
    bus.subscribe("observer", seen.append)
    domain = JobsDomain(bus, store)
    first = domain.submit(spec(), request_id="r-1")
    again = domain.submit(spec(), request_id="r-1")
    bus.drain(5)
    assert first.job_id == again.job_id
    assert len(seen) == 1
    with pytest.raises(InvalidArgument, match="request_id"):
        domain.submit(spec(deploy=False), request_id="r-1")


def test_events_fold_into_state_through_every_stage(bus, store):
    domain = JobsDomain(bus, store)
    bus.subscribe("jobs", domain.apply)
    job_id = domain.submit(spec()).job_id
    steps = [
        (dict(dataset_prepared=events_pb2.DatasetPrepared(dataset=common_pb2.DatasetRef(dataset_id="d1"))),
         Stage.JOB_STAGE_RECORDS, Status.JOB_STATUS_RUNNING),
        (dict(records_built=events_pb2.RecordsBuilt(records_uri="s3://b/records/d1")),
         Stage.JOB_STAGE_TRAINING, Status.JOB_STATUS_RUNNING),
        (dict(training_progress=events_pb2.TrainingProgress(epoch=2, total_loss=0.5)),
         Stage.JOB_STAGE_TRAINING, Status.JOB_STATUS_RUNNING),
        (dict(training_completed=events_pb2.TrainingCompleted(model=common_pb2.ModelRef(uri="s3://b/m"))),
         Stage.JOB_STAGE_EVALUATION, Status.JOB_STATUS_RUNNING),
        (dict(evaluation_completed=events_pb2.EvaluationCompleted(blessed=True, report_uri="s3://b/r")),
         Stage.JOB_STAGE_DEPLOYMENT, Status.JOB_STATUS_RUNNING),
        (dict(model_deployed=events_pb2.ModelDeployed(model=common_pb2.ModelRef(uri="s3://b/m", version=3))),
         Stage.JOB_STAGE_DEPLOYMENT, Status.JOB_STATUS_SUCCEEDED),
    ]
    for payload, stage, status in steps:
        bus.publish(new_event(job_id, "test", **payload))
        bus.drain(5)
        job = domain.get(job_id)
        assert (job.stage, job.status) == (stage, status), payload
    job = domain.get(job_id)
    assert job.dataset.dataset_id == "d1" and job.records_uri.endswith("d1")
    assert job.progress.epoch == 2 and job.model.version == 3 and job.blessed and job.report_uri == "s3://b/r"


def test_unblessed_model_ends_the_job_without_deployment(bus, store):
    domain = JobsDomain(bus, store)
    job_id = domain.submit(spec()).job_id
    domain.apply(new_event(job_id, "evaluator", evaluation_completed=events_pb2.EvaluationCompleted(blessed=False)))
    job = domain.get(job_id)
    assert job.status == Status.JOB_STATUS_SUCCEEDED and not job.blessed


def test_failure_and_late_events_after_the_end(bus, store):
    domain = JobsDomain(bus, store)
    job_id = domain.submit(spec()).job_id
    domain.apply(new_event(job_id, "trainer", stage_failed=events_pb2.StageFailed(
        stage=Stage.JOB_STAGE_TRAINING, message="out of memory")))
    domain.apply(new_event(job_id, "trainer", training_progress=events_pb2.TrainingProgress(epoch=9)))
    job = domain.get(job_id)
    assert job.status == Status.JOB_STATUS_FAILED and job.error == "out of memory"
    assert job.progress.epoch == 0
    with pytest.raises(FailedPrecondition, match="FAILED"):
        domain.cancel(job_id)


def test_cancel_publishes_a_cancel_request(bus, store):
    seen = []
    bus.subscribe("observer", seen.append, kinds=["cancel_requested"])
    domain = JobsDomain(bus, store)
    job_id = domain.submit(spec()).job_id
    domain.cancel(job_id, "changed my mind")
    bus.drain(5)
    assert [e.cancel_requested.reason for e in seen] == ["changed my mind"]
    domain.apply(new_event(job_id, "trainer", job_cancelled=events_pb2.JobCancelled(stage=Stage.JOB_STAGE_TRAINING)))
    assert domain.get(job_id).status == Status.JOB_STATUS_CANCELLED


def test_state_survives_a_restart(bus, store):
    domain = JobsDomain(bus, store)
    job_id = domain.submit(spec()).job_id
    domain.apply(new_event(job_id, "ingest", dataset_prepared=events_pb2.DatasetPrepared()))
    restarted = JobsDomain(bus, store)
    assert restarted.load() == 1
    assert restarted.get(job_id) == domain.get(job_id)


def test_list_filters_and_pages(bus, store):
    domain = JobsDomain(bus, store)
    ids = [domain.submit(spec()).job_id for _ in range(5)]
    domain.apply(new_event(ids[0], "x", stage_failed=events_pb2.StageFailed(message="bad")))
    first, token = domain.list(page_size=3)
    second, last_token = domain.list(page_size=3, page_token=token)
    assert len(first) == 3 and len(second) == 2 and last_token == ""
    assert {j.job_id for j in first + second} == set(ids)
    failed, _ = domain.list(status=Status.JOB_STATUS_FAILED)
    assert [j.job_id for j in failed] == [ids[0]]
    with pytest.raises(InvalidArgument, match="page_token"):
        domain.list(page_token="garbage")
    with pytest.raises(NotFound):
        domain.get("nope")


def test_watch_replays_history_then_follows_live_events_until_the_end(bus, store):
    import threading

    domain = JobsDomain(bus, store)
    bus.subscribe("jobs", domain.apply)
    job_id = domain.submit(spec(deploy=False)).job_id
    bus.publish(new_event(job_id, "ingest", dataset_prepared=events_pb2.DatasetPrepared()))
    bus.drain(5)
    received = []
    watcher = threading.Thread(target=lambda: received.extend(
        (e.WhichOneof("payload"), j.status) for e, j in domain.watch(job_id, lambda: True, poll_seconds=0.05)))
    watcher.start()
    bus.publish(new_event(job_id, "trainer", training_progress=events_pb2.TrainingProgress(epoch=1)))
    bus.publish(new_event(job_id, "evaluator", evaluation_completed=events_pb2.EvaluationCompleted(blessed=False)))
    bus.drain(5)
    watcher.join(5)
    assert not watcher.is_alive(), "watch did not end when the job ended"
    assert [kind for kind, _ in received] == [
        "job_submitted", "dataset_prepared", "training_progress", "evaluation_completed"]
    assert received[-1][1] == Status.JOB_STATUS_SUCCEEDED

    restarted = JobsDomain(bus, store)
    restarted.load()
    replay = [e.WhichOneof("payload") for e, _ in restarted.watch(job_id, lambda: True)]
    assert replay == [kind for kind, _ in received]


def test_watch_stops_when_the_client_goes_away(bus, store):
    domain = JobsDomain(bus, store)
    job_id = domain.submit(spec()).job_id
    assert list(domain.watch(job_id, lambda: False)) == []
    with pytest.raises(NotFound):
        list(domain.watch("missing", lambda: True))


def test_a_redelivered_event_is_recorded_once(bus, store):
    domain = JobsDomain(bus, store)
    job_id = domain.submit(spec()).job_id
    event = new_event(job_id, "ingest", dataset_prepared=events_pb2.DatasetPrepared())
    domain.apply(event)
    domain.apply(event)
    assert len(list(store.list(f"state/jobs/{job_id}/events/"))) == 1
    restarted = JobsDomain(bus, store)
    restarted.load()
    assert restarted.get(job_id).stage == Stage.JOB_STAGE_RECORDS


def test_a_job_waiting_for_a_busy_trainer_shows_its_queue_position_until_training_starts(bus, store):
    from services.cli import shown_status

    domain = JobsDomain(bus, store)
    job_id = domain.submit(spec()).job_id
    domain.apply(new_event(job_id, "tfrecords", records_built=events_pb2.RecordsBuilt(records_uri="s3://b/r")))
    domain.apply(new_event(job_id, "trainer", stage_heartbeat=events_pb2.StageHeartbeat(
        stage=Stage.JOB_STAGE_TRAINING, activity="queued for training on trainer t-1: position 2 of 2",
        queue_position=2)))
    job = domain.get(job_id)
    assert (job.queue_position, job.queue_reason) == (2, "queued for training on trainer t-1: position 2 of 2")
    assert shown_status(job) == "QUEUED #2" and job.status == Status.JOB_STATUS_RUNNING
    assert [j.queue_position for j in domain.list()[0]] == [2]  # ListJobs carries it too
    domain.apply(new_event(job_id, "trainer", stage_heartbeat=events_pb2.StageHeartbeat(
        stage=Stage.JOB_STAGE_TRAINING, activity="training")))
    job = domain.get(job_id)
    assert (job.queue_position, job.queue_reason) == (0, "") and shown_status(job) == "RUNNING"
    domain.apply(new_event(job_id, "trainer", stage_heartbeat=events_pb2.StageHeartbeat(
        stage=Stage.JOB_STAGE_TRAINING, activity="queued", queue_position=1)))  # taken over, waits again
    domain.apply(new_event(job_id, "trainer", training_progress=events_pb2.TrainingProgress(epoch=1)))
    assert domain.get(job_id).queue_position == 0
