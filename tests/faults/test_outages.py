"""Outages of the object store and the broker shorter than the outage window are ridden out: the job
completes, with one model version and no half-written artefacts."""

import time

import pytest

from tests.faults.conftest import Stage, Status, infra_script, record

pytestmark = [pytest.mark.integration, pytest.mark.faults]

OUTAGE_SECONDS = 30


@pytest.mark.parametrize("stage", [Stage.JOB_STAGE_INGEST, Stage.JOB_STAGE_RECORDS, Stage.JOB_STAGE_TRAINING,
                                   Stage.JOB_STAGE_EVALUATION], ids=lambda s: Stage.Name(s).lower()[10:])
def test_minio_down_for_30s_during_a_stage_and_the_job_completes(platform, stage):
    name = f"minio-{Stage.Name(stage).lower()[10:]}"
    training = stage == Stage.JOB_STAGE_TRAINING
    job_id = platform.submit(platform.spec(name, epochs=40 if training else 3))
    at_fault = platform.wait_stage(job_id, stage, training_progress=training, started=True)
    infra_script("minio", "down")
    fault_at = time.monotonic()
    time.sleep(OUTAGE_SECONDS)  # the fault itself: MinIO stays down this long
    infra_script("minio", "up")
    ended = platform.wait_terminal(job_id, fault_at)
    record(f"MinIO down {OUTAGE_SECONDS}s during {Stage.Name(stage)[10:].lower()}", Status.JOB_STATUS_SUCCEEDED,
           ended, at_fault.stage)
    assert ended.job.status == Status.JOB_STATUS_SUCCEEDED, f"{ended.job}\n{platform.logs_tail()}"
    assert platform.versions(name) == [1]
    assert platform.orphans(ended.job) == []


def test_a_kafka_broker_restart_mid_training_and_the_job_completes(platform):
    name = "kafka-restart"
    job_id = platform.submit(platform.spec(name, epochs=30))
    at_fault = platform.wait_stage(job_id, Stage.JOB_STAGE_TRAINING, training_progress=True)
    fault_at = time.monotonic()
    infra_script("kafka", "down")
    infra_script("kafka", "up")
    ended = platform.wait_terminal(job_id, fault_at)
    record("Kafka broker restarted during training", Status.JOB_STATUS_SUCCEEDED, ended, at_fault.stage)
    assert ended.job.status == Status.JOB_STATUS_SUCCEEDED, f"{ended.job}\n{platform.logs_tail()}"
    assert platform.versions(name) == [1]
    assert platform.events(job_id).count("model_deployed") == 1
    assert platform.orphans(ended.job) == []
