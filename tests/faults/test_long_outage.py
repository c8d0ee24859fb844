"""An object-store outage longer than the outage window ends the job FAILED, naming the stage and
why, instead of leaving it RUNNING."""

import time

import pytest

from tests.faults.conftest import Platform, Stage, Status, infra_script, record

pytestmark = [pytest.mark.integration, pytest.mark.faults]

WINDOW_SECONDS = 15


@pytest.fixture(scope="module")
def short_window(infra_addresses, tmp_path_factory):
    platform = Platform(infra_addresses, tmp_path_factory.mktemp("long-outage"),
                        CLASSFORGE_OUTAGE_WINDOW_SECONDS=str(WINDOW_SECONDS))
    yield platform
    platform.stop()


def test_minio_down_longer_than_the_window_fails_the_job_clearly(short_window):
    platform = short_window
    job_id = platform.submit(platform.spec("long-outage", epochs=60))
    at_fault = platform.wait_stage(job_id, Stage.JOB_STAGE_TRAINING, training_progress=True)
    infra_script("minio", "down")
    fault_at = time.monotonic()
    # Down for three windows: the trainer gives up and says so through Kafka meanwhile; the jobs
    # service records the failure once it can write again.
    time.sleep(3 * WINDOW_SECONDS)
    infra_script("minio", "up")
    ended = platform.wait_terminal(job_id, fault_at)
    record(f"MinIO down {3 * WINDOW_SECONDS}s, window {WINDOW_SECONDS}s (training)", Status.JOB_STATUS_FAILED,
           ended, at_fault.stage)
    job = ended.job
    assert job.status == Status.JOB_STATUS_FAILED, f"{job}\n{platform.logs_tail()}"
    assert job.stage == Stage.JOB_STAGE_TRAINING
    assert "outage window" in job.error and "object store" in job.error, job.error
    assert platform.versions("long-outage") == []
