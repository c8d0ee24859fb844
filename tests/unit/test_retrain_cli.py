"""`classforge submit --from JOB` and `classforge run --from JOB`: the new spec starts from the earlier job's
model (initial_weights_uri job://JOB) and takes its architecture wherever the new spec sets none."""

import argparse
import json

import pytest

from classforge.v1 import common_pb2, events_pb2
from classforge.v1 import jobs_service_pb2_grpc as pb_grpc
from services.cli import main, retrain_embedded
from services.common.events import InProcessEventBus, new_event
from services.common.grpc_server import GrpcServer
from services.common.job_uri import retrain_from
from services.common.storage import LocalObjectStore
from services.jobs.domain import JobsDomain
from services.jobs.main import SERVICE_NAME
from services.jobs.servicer import JobsServicer
from services.trainer.config import to_json, with_defaults


@pytest.fixture
def jobs(tmp_path):
    bus = InProcessEventBus()
    domain = JobsDomain(bus, LocalObjectStore(tmp_path / "store"))
    bus.subscribe("jobs", domain.apply)
    server = GrpcServer("cli-test", port=0, host="127.0.0.1", grace_seconds=1, plaintext=True)
    server.add_service(pb_grpc.add_JobsServiceServicer_to_server, JobsServicer(domain), SERVICE_NAME)
    server.start()
    yield f"127.0.0.1:{server.port}", bus
    server.stop()
    bus.close()


def test_retrain_from_keeps_the_new_settings_and_fills_the_architecture():
    earlier = common_pb2.TrainingConfig(backbone=common_pb2.BACKBONE_SMALL_CNN, width_multiplier=0.25, input_size=28,
                                        small_input_stem=True, batch_size=256,
                                        full_stage=common_pb2.TrainingStage(epochs=30))
    new = common_pb2.TrainingConfig(input_size=32, full_stage=common_pb2.TrainingStage(epochs=3))
    merged = retrain_from(new, earlier, "job-1")
    assert merged.initial_weights_uri == "job://job-1"
    assert (merged.backbone, merged.width_multiplier, merged.small_input_stem) == (
        common_pb2.BACKBONE_SMALL_CNN, 0.25, True)
    assert merged.input_size == 32 and merged.full_stage.epochs == 3  # the new spec's own choices
    assert merged.batch_size == 0  # not architecture: the trainer's default, not the earlier run's
    assert new.initial_weights_uri == ""  # the caller's message is not changed


def test_submit_from_an_earlier_job(jobs, tmp_path, capsys):
    address, bus = jobs
    first = tmp_path / "first.yaml"
    first.write_text("source: {object_prefix: uploads/shoes/}\n"
                     "training: {backbone: BACKBONE_SMALL_CNN, width_multiplier: 0.5, input_size: 28}\n")
    assert main(["--plaintext", "--jobs", address, "submit", str(first)]) == 0
    earlier = capsys.readouterr().out.strip()
    second = tmp_path / "second.yaml"
    second.write_text("source: {dataset_id: ds-relabelled}\ntraining: {full_stage: {epochs: 3}}\n")

    with pytest.raises(SystemExit, match=f"--from {earlier}: that job has no model \\(status PENDING\\)"):
        main(["--plaintext", "--jobs", address, "submit", str(second), "--from", earlier])

    model = common_pb2.ModelRef(job_id=earlier, uri=f"s3://b/models/{earlier}/saved_model/")
    bus.publish(new_event(earlier, "trainer", training_completed=events_pb2.TrainingCompleted(model=model)))
    bus.drain(timeout=10)
    assert main(["--plaintext", "--jobs", address, "submit", str(second), "--from", earlier]) == 0
    job_id = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["--plaintext", "--jobs", address, "--json", "status", job_id]) == 0
    training = json.loads(capsys.readouterr().out)["spec"]["training"]
    assert training["initial_weights_uri"] == f"job://{earlier}"
    assert (training["backbone"], training["width_multiplier"], training["input_size"]) == (
        "BACKBONE_SMALL_CNN", 0.5, 28)
    assert training["full_stage"] == {"epochs": 3}

    assert main(["--plaintext", "--jobs", address, "submit", str(second), "--from", "no-such-job"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_run_from_reads_the_earlier_model_in_the_out_folder(tmp_path):
    out = tmp_path / "out"
    store = LocalObjectStore(out / "store")
    earlier = with_defaults(common_pb2.TrainingConfig(backbone=common_pb2.BACKBONE_SMALL_CNN, width_multiplier=0.25,
                                                      input_size=28))
    store.put_bytes("models/job-a/config.json", to_json(earlier).encode())  # what the trainer exports
    args = argparse.Namespace(from_job="job-a", out=str(out))
    spec = retrain_embedded(args, common_pb2.JobSpec(training=common_pb2.TrainingConfig(batch_size=64)))
    assert spec.training.initial_weights_uri == "job://job-a" and spec.training.batch_size == 64
    assert (spec.training.backbone, spec.training.width_multiplier, spec.training.input_size) == (
        common_pb2.BACKBONE_SMALL_CNN, 0.25, 28)
    assert not spec.training.HasField("head_stage")  # the trainer decides: none when the classes match

    with pytest.raises(SystemExit, match="--from job-b: no finished model of that job in"):
        retrain_embedded(argparse.Namespace(from_job="job-b", out=str(out)), common_pb2.JobSpec())
    with pytest.raises(SystemExit, match="classforge: --from: 'job://../x' is not job://<job id>"):
        retrain_embedded(argparse.Namespace(from_job="../x", out=str(out)), common_pb2.JobSpec())
    unchanged = common_pb2.JobSpec(display_name="x")
    assert retrain_embedded(argparse.Namespace(from_job="", out=str(out)), unchanged) is unchanged
