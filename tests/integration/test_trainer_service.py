"""The trainer as its own process against the real infrastructure: tiny records in MinIO, job_submitted
and records_built on Kafka -> training_progress and training_completed on Kafka, the SavedModel in
MinIO, GetTraining over gRPC, the trainer's gauges in Prometheus."""

import time
import uuid

import grpc
import pytest

from classforge.v1 import common_pb2, events_pb2
from classforge.v1 import trainer_service_pb2 as pb
from classforge.v1 import trainer_service_pb2_grpc as pb_grpc
from services.common.events import new_event
from services.common.events.kafka import KafkaBusConfig, KafkaEventBus
from services.common.grpc_server import wait_until_serving
from services.common.storage.minio import MinioObjectStore
from tests.integration.kafka_topic import positioned_consumer, topics

pytestmark = pytest.mark.integration

TRAINER_GRPC, TRAINER_METRICS = 50054, 9104


def test_records_built_on_kafka_becomes_a_model_in_minio(infra, prometheus, start_service, tmp_path):
    from tests.support import sample_dataset

    bucket = f"it-trainer-{uuid.uuid4().hex[:8]}"
    store = MinioObjectStore(infra["CLASSFORGE_S3_ENDPOINT"], infra["CLASSFORGE_S3_ACCESS_KEY"],
                             infra["CLASSFORGE_S3_SECRET_KEY"], bucket)
    records = sample_dataset.small_digits_records(store)

    env = {**infra, "CLASSFORGE_S3_BUCKET": bucket, "CLASSFORGE_GRPC_PORT": str(TRAINER_GRPC),
           "CLASSFORGE_METRICS_PORT": str(TRAINER_METRICS), "CLASSFORGE_GRACE_SECONDS": "5",
           "CLASSFORGE_TRAINER_WORK_DIR": str(tmp_path / "work"), "CLASSFORGE_TRAINER_PROGRESS_SECONDS": "0.5"}
    service = start_service("trainer", env)
    channel = grpc.insecure_channel(f"127.0.0.1:{TRAINER_GRPC}")
    try:
        wait_until_serving(channel, timeout=120)
    except TimeoutError:
        pytest.fail(f"trainer never became SERVING:\n{service.log()}")
    consumer = positioned_consumer(infra)

    job_id = f"it-{uuid.uuid4().hex[:12]}"
    training = common_pb2.TrainingConfig(
        input_size=16, batch_size=32, backbone=common_pb2.BACKBONE_SMALL_CNN, width_multiplier=0.25,
        full_stage=common_pb2.TrainingStage(epochs=2, learning_rate=0.05),
        augmentation=common_pb2.Augmentation(brightness=0.1))
    bus = KafkaEventBus(KafkaBusConfig(infra["CLASSFORGE_KAFKA_BOOTSTRAP"], client_id="it-trainer",
                                       **topics(infra)))
    spec = common_pb2.JobSpec(source=common_pb2.DataSource(dataset_id="digits"), training=training)
    bus.publish(new_event(job_id, "jobs", job_submitted=events_pb2.JobSubmitted(spec=spec)))
    bus.publish(new_event(job_id, "tfrecords", records_built=events_pb2.RecordsBuilt(
        dataset_id="digits", records_uri=store.uri(records.prefix), train_examples=192, val_examples=48)))

    deadline, seen = time.monotonic() + 240, []
    while time.monotonic() < deadline and "training_completed" not in [e.WhichOneof("payload") for e in seen]:
        for record in consumer:
            if record.key == job_id.encode():
                seen.append(events_pb2.Event.FromString(record.value))
    kinds = [e.WhichOneof("payload") for e in seen]
    assert "training_progress" in kinds and kinds[-1] == "training_completed", f"{kinds}\n{service.log()[-5000:]}"
    completed = seen[-1].training_completed
    assert completed.model.job_id == job_id and completed.model.uri == f"s3://{bucket}/models/{job_id}/saved_model/"
    assert completed.records_uri == store.uri(records.prefix)
    assert store.exists(f"models/{job_id}/saved_model/saved_model.pb")
    assert store.exists(f"models/{job_id}/saved_model/assets/labels.json")
    assert store.exists(f"models/{job_id}/history.json")
    assert store.exists(f"models/{job_id}/model.keras")  # the evaluator's Grad-CAM model

    stub = pb_grpc.TrainerServiceStub(channel)
    got = stub.GetTraining(pb.GetTrainingRequest(job_id=job_id), timeout=10).training
    assert got.status == pb.TRAINING_STATUS_SUCCEEDED and got.model.uri == completed.model.uri
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetTraining(pb.GetTrainingRequest(job_id="no-such-job"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        stub.StopTraining(pb.StopTrainingRequest(job_id=job_id), timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    assert prometheus.wait_for_value('classforge_trainer_step{job="trainer"}', lambda v: v >= 1, timeout=30) >= 1
    assert service.terminate() == 0, service.log()[-5000:]
    bus.close()
    consumer.close()
    channel.close()
