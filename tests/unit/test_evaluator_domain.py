"""The evaluator's domain on the in-process bus and a local object store: events in, report and
evaluation_completed out; idempotency, the baseline of the served model, user errors, gRPC."""

import json
from pathlib import Path

import grpc
import pytest

from classforge.v1 import common_pb2, events_pb2
from classforge.v1 import evaluator_service_pb2 as pb
from classforge.v1 import evaluator_service_pb2_grpc as pb_grpc
from services.common import mislabel_review
from services.common.events import InProcessEventBus, new_event, payload_kind
from services.common.grpc_server import GrpcServer
from services.common.storage import LocalObjectStore
from services.evaluator.domain import EvaluatorDomain
from services.evaluator.engine import Options
from services.evaluator.main import GROUP, KINDS, SERVICE_NAME
from services.evaluator.servicer import EvaluatorServicer
from tests.support.colour_model import COLOURS, ColourRecords, write_colour_model

CLASSES = list(COLOURS)


@pytest.fixture
def world(tmp_path):
    store = LocalObjectStore(tmp_path / "store")
    bus = InProcessEventBus(backoff_s=0.01, outage_window_s=0.5)
    domain = EvaluatorDomain(bus, store, tmp_path / "work", Options(batch_size=8), open_records=ColourRecords)
    seen: list[events_pb2.Event] = []
    bus.subscribe(GROUP, domain.handle, kinds=KINDS)
    bus.subscribe("test-observer", seen.append)
    yield store, bus, domain, seen, tmp_path
    bus.close()


def put_model(store, tmp_path: Path, job: str, sharpness: float = 4.0) -> common_pb2.ModelRef:
    local = write_colour_model(tmp_path / f"model-{job}", CLASSES, sharpness=sharpness)
    files = sorted(p for p in local.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == "saved_model.pb")
    for path in files:
        store.put_file(f"models/{job}/saved_model/{path.relative_to(local).as_posix()}", path)
    store.put_bytes(f"models/{job}/history.json", json.dumps([{"epoch": 0, "loss": 1.0, "regularization_loss": .2}]
                                                             ).encode())
    return common_pb2.ModelRef(job_id=job, uri=store.uri(f"models/{job}/saved_model") + "/")


def run_job(store, bus, tmp_path, job, gates, sharpness=4.0, model=None):
    spec = common_pb2.JobSpec(gates=gates, deploy=common_pb2.DeployOptions(deploy=True))
    bus.publish(new_event(job, "jobs", job_submitted=events_pb2.JobSubmitted(spec=spec)))
    model = model or put_model(store, tmp_path, job, sharpness)
    done = events_pb2.TrainingCompleted(model=model, records_uri="s3://x/records/r1",
                                        history_uri=store.uri(f"models/{job}/history.json"))
    bus.publish(new_event(job, "trainer", training_completed=done))
    bus.drain(timeout=60)
    return done


def outcomes(seen, job):
    return [e for e in seen if e.job_id == job and payload_kind(e) in ("evaluation_completed", "stage_failed")]


def test_training_completed_becomes_a_report_and_one_evaluation_completed(world):
    store, bus, domain, seen, tmp_path = world
    done = run_job(store, bus, tmp_path, "job-a", common_pb2.EvaluationGates(min_accuracy=0.8))
    [event] = outcomes(seen, "job-a")
    result = event.evaluation_completed
    assert result.blessed and result.accuracy == pytest.approx(0.9) and result.model.job_id == "job-a"
    assert result.reasons[0] == "blessed" and any("min_accuracy 0.8000" in r for r in result.reasons)
    assert result.report_uri == store.uri("reports/job-a") + "/"
    keys = {info.key for info in store.list("reports/job-a/")}
    for name in ("evaluation.json", "index.html", "plots/confusion_matrix.png", "plots/training_curves.png"):
        assert f"reports/job-a/{name}" in keys
    assert any(k.startswith("reports/job-a/gallery/red/") for k in keys)
    assert json.loads(store.get_bytes("state/evaluator/served/classforge.json"))["job_id"] == "job-a"

    # mislabels.csv beside the report: every wrong prediction (the fixture mislabels images 0, 10, 20),
    # with the model's answer, ranked by score, and an empty decision column for the reviewer
    header, rows = mislabel_review.read(store.get_bytes("reports/job-a/mislabels.csv").decode())
    assert tuple(header) == mislabel_review.COLUMNS
    records = {e.source_id: e for e in ColourRecords()._examples}
    assert sorted(records[row["image_id"]].filename for _, row in rows) == ["0.png", "10.png", "20.png"]
    for _, row in rows:
        colour = int(records[row["image_id"]].filename[:-4]) % 3
        assert row["path"] == records[row["image_id"]].filename and row["task"] == "label"
        assert row["predicted_label"] == CLASSES[colour] and row["given_label"] == CLASSES[(colour + 1) % 3]
        assert 0 < float(row["score"]) <= float(row["confidence"]) <= 1 and row["decision"] == ""
    scores = [float(row["score"]) for _, row in rows]
    assert scores == sorted(scores, reverse=True)

    # redelivery (a new event id): the stored outcome is published again, nothing is recomputed
    opened = ColourRecords.opened
    bus.publish(new_event("job-a", "trainer", training_completed=done))
    bus.drain(timeout=30)
    again = outcomes(seen, "job-a")
    assert len(again) == 2 and again[1].evaluation_completed == result and ColourRecords.opened == opened

    report = domain.get_report("job-a")
    assert report.blessed and report.tasks[0].classes[0].label == "red" and report.tasks[0].classes[0].support == 10


def test_a_worse_model_is_not_blessed_against_the_served_one(world):
    store, bus, domain, seen, tmp_path = world
    run_job(store, bus, tmp_path, "job-a", common_pb2.EvaluationGates())
    run_job(store, bus, tmp_path, "job-b", common_pb2.EvaluationGates(max_regression=0.05), sharpness=-4.0)
    [event] = outcomes(seen, "job-b")
    reasons = list(event.evaluation_completed.reasons)
    assert not event.evaluation_completed.blessed
    assert any(r.startswith("FAIL accuracy") and "baseline job-a (its report)" in r for r in reasons), reasons
    assert any(r.startswith("FAIL recall of 'red'") for r in reasons), reasons
    # the served model stays job-a
    assert json.loads(store.get_bytes("state/evaluator/served/classforge.json"))["job_id"] == "job-a"


def test_a_missing_model_fails_the_stage_and_the_handler_returns(world):
    store, bus, domain, seen, tmp_path = world
    missing = common_pb2.ModelRef(job_id="job-c", uri=store.uri("models/job-c/saved_model") + "/")
    run_job(store, bus, tmp_path, "job-c", common_pb2.EvaluationGates(), model=missing)
    [event] = outcomes(seen, "job-c")
    assert payload_kind(event) == "stage_failed"
    assert event.stage_failed.stage == common_pb2.JOB_STAGE_EVALUATION
    assert "saved_model.pb is missing" in event.stage_failed.message


def test_grpc_evaluate_and_get_report(world):
    store, bus, domain, seen, tmp_path = world
    server = GrpcServer("evaluator-test", port=0, host="127.0.0.1", grace_seconds=1, plaintext=True)
    server.add_service(pb_grpc.add_EvaluatorServiceServicer_to_server, EvaluatorServicer(domain), SERVICE_NAME)
    server.start()
    try:
        stub = pb_grpc.EvaluatorServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetReport(pb.GetReportRequest(job_id="nope"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            stub.Evaluate(pb.EvaluateRequest(records_uri="s3://x/records/r1"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "job_id" in caught.value.details()
        model = put_model(store, tmp_path, "job-d")
        reply = stub.Evaluate(pb.EvaluateRequest(job_id="job-d", model=model, records_uri="s3://x/records/r1",
                                                 gates=common_pb2.EvaluationGates(min_accuracy=0.95)), timeout=60)
        assert not reply.report.blessed and reply.report.tasks[0].accuracy == pytest.approx(0.9)
        assert stub.GetReport(pb.GetReportRequest(job_id="job-d"), timeout=10).report == reply.report
        assert not outcomes(seen, "job-d")  # ad-hoc evaluations publish nothing
    finally:
        server.stop()
