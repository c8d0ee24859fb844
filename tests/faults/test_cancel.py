"""Cancel is honoured at every stage: the job ends CANCELLED, the stage says it stopped, and nothing of
the later stages is made. Cancelling twice is harmless."""

import time

import grpc
import pytest

from tests.faults.conftest import Stage, Status, record

pytestmark = [pytest.mark.integration, pytest.mark.faults]

STAGES = [Stage.JOB_STAGE_INGEST, Stage.JOB_STAGE_RECORDS, Stage.JOB_STAGE_TRAINING, Stage.JOB_STAGE_EVALUATION]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: Stage.Name(s).lower()[10:])
def test_cancel_during_a_stage_ends_cancelled_and_stops_the_pipeline(platform, stage):
    name = f"cancel-{Stage.Name(stage).lower()[10:]}"
    training = stage == Stage.JOB_STAGE_TRAINING
    job_id = platform.submit(platform.spec(name, epochs=40 if training else 3))
    at_fault = platform.wait_stage(job_id, stage, training_progress=training, started=True)
    fault_at = time.monotonic()
    platform.cancel(job_id)
    platform.cancel(job_id)  # twice: harmless
    ended = platform.wait_terminal(job_id, fault_at)
    record(f"cancel during {Stage.Name(stage)[10:].lower()}", Status.JOB_STATUS_CANCELLED, ended, at_fault.stage,
           note=f"stopped by {Stage.Name(ended.job.stage)[10:].lower()}")
    job = ended.job
    assert job.status == Status.JOB_STATUS_CANCELLED, f"{job}\n{platform.logs_tail()}"
    assert platform.cancel(job_id).status == Status.JOB_STATUS_CANCELLED  # and after the end
    kinds = platform.events(job_id)
    assert "job_cancelled" in kinds and "model_deployed" not in kinds and "evaluation_completed" not in kinds, kinds
    assert platform.versions(name) == []
    if stage >= Stage.JOB_STAGE_TRAINING:
        assert job.stage >= Stage.JOB_STAGE_TRAINING
    if training:  # stopped within an epoch, with a final checkpoint
        assert "training_completed" not in kinds
        assert list(platform.store.list(f"models/{job_id}/checkpoints/"))
    assert platform.orphans(job) == []


def test_cancel_during_deployment_ends_cancelled_before_the_copy_or_succeeds_if_too_late(platform):
    name = "cancel-deployment"
    job_id = platform.submit(platform.spec(name))
    at_fault = platform.wait_stage(job_id, Stage.JOB_STAGE_DEPLOYMENT)
    fault_at = time.monotonic()
    try:
        platform.cancel(job_id)
    except grpc.RpcError as exc:  # the deployment finished first
        assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
    ended = platform.wait_terminal(job_id, fault_at)
    record("cancel during deployment", Status.JOB_STATUS_CANCELLED, ended, at_fault.stage,
           note="SUCCEEDED is right when the version was already in")
    if ended.job.status == Status.JOB_STATUS_CANCELLED:
        assert platform.versions(name) == []
    else:
        assert ended.job.status == Status.JOB_STATUS_SUCCEEDED and platform.versions(name) == [1]
