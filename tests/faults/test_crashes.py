"""kill -9 of each service mid-stage, then a restart: the job completes with exactly one model
version and one model_deployed. A poisoned message and a service that never comes back end the job
FAILED with the stage and the reason."""

import time

import pytest

from tests.faults.conftest import Stage, Status, record

pytestmark = [pytest.mark.integration, pytest.mark.faults]

KILLS = [("ingest", Stage.JOB_STAGE_INGEST), ("tfrecords", Stage.JOB_STAGE_RECORDS),
         ("trainer", Stage.JOB_STAGE_TRAINING), ("jobs", Stage.JOB_STAGE_TRAINING),
         ("evaluator", Stage.JOB_STAGE_EVALUATION), ("inference", Stage.JOB_STAGE_DEPLOYMENT)]


@pytest.mark.parametrize(("service", "stage"), KILLS, ids=[f"{s}" for s, _ in KILLS])
def test_kill_9_mid_stage_then_restart_and_the_job_completes_once(platform, service, stage):
    name = f"kill-{service}"
    training = stage == Stage.JOB_STAGE_TRAINING
    job_id = platform.submit(platform.spec(name, epochs=20 if training else 3))
    at_fault = platform.wait_stage(job_id, stage, training_progress=training, started=True)
    platform.kill9(service)
    fault_at = time.monotonic()
    platform.restart(service)
    ended = platform.wait_terminal(job_id, fault_at)
    record(f"kill -9 {service} during {Stage.Name(stage)[10:].lower()}", Status.JOB_STATUS_SUCCEEDED, ended,
           at_fault.stage)
    assert ended.job.status == Status.JOB_STATUS_SUCCEEDED, f"{ended.job}\n{platform.logs_tail()}"
    assert platform.versions(name) == [1]
    assert platform.events(job_id).count("model_deployed") == 1
    assert platform.orphans(ended.job) == []


def test_a_poisoned_message_fails_the_job_through_the_dead_letter_topic(platform):
    job_id = platform.submit(platform.spec("poison", epochs=30))
    at_fault = platform.wait_stage(job_id, Stage.JOB_STAGE_TRAINING, training_progress=True)
    fault_at = time.monotonic()
    platform.publish_raw(job_id, b"\xff\x00 not an event")  # every consumer group gives up on it at once
    ended = platform.wait_terminal(job_id, fault_at)
    record("poisoned message (not an Event) for the job", Status.JOB_STATUS_FAILED, ended, at_fault.stage)
    assert ended.job.status == Status.JOB_STATUS_FAILED, f"{ended.job}\n{platform.logs_tail()}"
    assert "gave up on an unreadable message" in ended.job.error and "unparseable" in ended.job.error


def test_a_stage_whose_service_never_comes_back_fails_at_its_deadline(platform):
    """Last in the module: it leaves the trainer down until the deadline has passed."""
    job_id = platform.submit(platform.spec("silent", epochs=60))
    at_fault = platform.wait_stage(job_id, Stage.JOB_STAGE_TRAINING, training_progress=True)
    platform.kill9("trainer")
    fault_at = time.monotonic()
    ended = platform.wait_terminal(job_id, fault_at)
    record("kill -9 trainer, never restarted", Status.JOB_STATUS_FAILED, ended, at_fault.stage,
           note="ends at the stage deadline (90 s in this suite)")
    platform.restart("trainer")
    job = ended.job
    assert job.status == Status.JOB_STATUS_FAILED and job.stage == Stage.JOB_STAGE_TRAINING, job
    assert "no progress from the training stage" in job.error and "trainer service" in job.error, job.error
