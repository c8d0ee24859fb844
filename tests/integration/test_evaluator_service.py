"""The evaluator as its own process against the real infrastructure: records built into MinIO, the
fixture SavedModel uploaded next to them, job_submitted + training_completed published on Kafka, and
exactly one evaluation_completed back with the blessing decision, the report in MinIO, GetReport over
gRPC, and the evaluator's metrics in Prometheus."""

import json
import time
import uuid

import grpc
import pytest

from classforge.v1 import common_pb2, events_pb2
from classforge.v1 import evaluator_service_pb2 as pb
from classforge.v1 import evaluator_service_pb2_grpc as pb_grpc
from services.common.events import KafkaEventBus, ObjectStoreProcessedEvents, new_event
from services.common.grpc_server import wait_until_serving
from services.common.storage import MinioObjectStore
from services.evaluator.main import GROUP
from services.tfrecords.builder import BuildOptions, RecordsBuilder
from tests.integration.kafka_topic import positioned_consumer, topics
from tests.support.colour_model import write_colour_model
from tests.support.sample_dataset import DIGIT_TASKS, digits_items, write_dataset

pytestmark = pytest.mark.integration

# The ports deploy/local/prometheus.yml scrapes for the evaluator.
GRPC_PORT, METRICS_PORT = 50055, 9105
DIGITS = [str(d) for d in range(10)]


def evaluator_events(consumer, job_id: str, found: list, until, timeout: float, log) -> list:
    deadline = time.monotonic() + timeout
    while not until(found):
        assert time.monotonic() < deadline, f"events so far: {found}\n{log()}"
        for record in consumer:
            event = events_pb2.Event.FromString(record.value)
            if (record.key == job_id.encode() and event.producer == "evaluator"
                    and event.WhichOneof("payload") != "stage_heartbeat"):
                found.append(event)
    return found


def test_evaluator_service_over_kafka_and_minio(infra, prometheus, start_service, tmp_path):
    bucket = f"it-evaluator-{uuid.uuid4().hex[:8]}"
    env = {**infra, "CLASSFORGE_S3_BUCKET": bucket, "CLASSFORGE_GRPC_PORT": str(GRPC_PORT),
           "CLASSFORGE_METRICS_PORT": str(METRICS_PORT), "CLASSFORGE_GRACE_SECONDS": "5",
           "CLASSFORGE_EVALUATOR_WORK_DIR": str(tmp_path / "work"), "CLASSFORGE_EVALUATOR_BATCH_SIZE": "16"}
    store = MinioObjectStore(infra["CLASSFORGE_S3_ENDPOINT"], infra["CLASSFORGE_S3_ACCESS_KEY"],
                             infra["CLASSFORGE_S3_SECRET_KEY"], bucket)
    items = digits_items(60)
    write_dataset(store, "digits", {"train": items[:20], "test": items[20:]}, DIGIT_TASKS[:1])
    build = RecordsBuilder(workers=1).build(store, "digits", BuildOptions(min_shards=2))
    job_id = f"it-{uuid.uuid4()}"
    model = write_colour_model(tmp_path / "model", DIGITS, task="digit")
    files = sorted(p for p in model.rglob("*") if p.is_file())
    for path in sorted(files, key=lambda p: p.name == "saved_model.pb"):
        store.put_file(f"models/{job_id}/saved_model/{path.relative_to(model).as_posix()}", path)
    store.put_bytes(f"models/{job_id}/history.json", json.dumps(
        [{"epoch": 0, "loss": 2.0, "regularization_loss": 0.3}, {"epoch": 1, "loss": 1.5, "regularization_loss": 0.3}]
    ).encode())

    service = start_service("evaluator", env)
    channel = grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}")
    try:
        wait_until_serving(channel, timeout=120)
    except TimeoutError:
        pytest.fail(f"evaluator never became SERVING:\n{service.log()}")
    consumer = positioned_consumer(infra)
    bus = KafkaEventBus(infra["CLASSFORGE_KAFKA_BOOTSTRAP"], client_id=f"it-evaluator-{uuid.uuid4().hex[:6]}",
                        **topics(infra))
    try:
        spec = common_pb2.JobSpec(gates=common_pb2.EvaluationGates(min_accuracy=0.99))
        bus.publish(new_event(job_id, "jobs", job_submitted=events_pb2.JobSubmitted(spec=spec)))
        done = events_pb2.TrainingCompleted(
            model=common_pb2.ModelRef(job_id=job_id, uri=f"s3://{bucket}/models/{job_id}/saved_model/"),
            records_uri=f"s3://{bucket}/{build.prefix}", history_uri=f"s3://{bucket}/models/{job_id}/history.json")
        bus.publish(new_event(job_id, "trainer", training_completed=done))
        found = evaluator_events(consumer, job_id, [], lambda f: len(f) >= 1, 180, service.log)
        [event] = found
        assert event.WhichOneof("payload") == "evaluation_completed", event
        result = event.evaluation_completed
        assert not result.blessed  # a colour model reading digits is no good: min_accuracy 0.99 fails it
        assert result.reasons[0].startswith("not blessed") and any("< min_accuracy 0.9900" in r for r in result.reasons)
        assert result.report_uri == f"s3://{bucket}/reports/{job_id}/"
        document = json.loads(store.get_bytes(f"reports/{job_id}/evaluation.json"))
        assert document["examples"] == 40 and document["records"]["build_id"] == build.build_id
        assert document["tasks"][0]["accuracy"] == pytest.approx(result.accuracy)
        for name in ("index.html", "plots/confusion_matrix.png", "plots/training_curves.png"):
            assert store.exists(f"reports/{job_id}/{name}"), name

        # redelivery: handled (marked processed) but answered with the stored outcome, not recomputed
        again = new_event(job_id, "trainer", training_completed=done)
        bus.publish(again)
        marker = ObjectStoreProcessedEvents(store).key(GROUP, again.event_id)
        deadline = time.monotonic() + 60
        while not store.exists(marker):
            assert time.monotonic() < deadline, service.log()
            time.sleep(0.2)
        found = evaluator_events(consumer, job_id, found, lambda f: len(f) >= 2, 30, service.log)
        assert len(found) == 2 and found[1].evaluation_completed == result

        stub = pb_grpc.EvaluatorServiceStub(channel)
        report = stub.GetReport(pb.GetReportRequest(job_id=job_id), timeout=10).report
        assert report.tasks[0].task == "digit" and report.reasons == result.reasons
        prometheus.wait_for_value('classforge_evaluator_evaluations_total{job="evaluator",outcome="not_blessed"}',
                                  lambda v: v >= 1)
    finally:
        bus.close()
        consumer.close()
