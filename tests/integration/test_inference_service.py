"""The inference service and the model server stand-in as their own processes, against the real
Kafka and MinIO: a blessed model's events on Kafka -> copied from MinIO to the model base path ->
AVAILABLE on the model server -> model_deployed on Kafka (once) -> Classify over gRPC. An unblessed
model is never published."""

from __future__ import annotations

import time
import uuid

import grpc
import numpy as np
import pytest
from kafka import KafkaConsumer

from classforge.v1 import common_pb2, events_pb2
from classforge.v1 import inference_service_pb2 as pb
from classforge.v1 import inference_service_pb2_grpc as pb_grpc
from services.common.events import ObjectStoreProcessedEvents, new_event
from services.common.events.kafka import KafkaBusConfig, KafkaEventBus
from services.common.grpc_server import wait_until_serving
from services.common.storage.minio import MinioObjectStore
from tests.conftest import PLAINTEXT_NO_AUTH
from tests.integration.kafka_topic import positioned_consumer, topics
from tests.support import toy_model

pytestmark = pytest.mark.integration

# The ports deploy/local/prometheus.yml scrapes (services.common.settings.DEFAULT_PORTS).
INFERENCE_GRPC, INFERENCE_METRICS = 50056, 9106
MODEL_SERVER_GRPC, MODEL_SERVER_METRICS = 8500, 9107


def read_events(consumer: KafkaConsumer, job_ids: set[str], seconds: float, until=None) -> list[events_pb2.Event]:
    deadline, found = time.monotonic() + seconds, []
    while time.monotonic() < deadline:
        for record in consumer:
            if record.key and record.key.decode() in job_ids:
                found.append(events_pb2.Event.FromString(record.value))
        if until is not None and until(found):
            break
    return found


def kinds(events, job_id: str, kind: str) -> list[events_pb2.Event]:
    return [e for e in events if e.job_id == job_id and e.WhichOneof("payload") == kind]


def test_blessed_model_published_from_kafka_and_minio_then_classified(infra, start_service, tmp_path):
    import tensorflow as tf

    bucket = f"it-inference-{uuid.uuid4().hex[:8]}"
    base = tmp_path / "models"
    base.mkdir()
    model_server = start_service("model_server", {
        "CLASSFORGE_MODEL_BASE_PATH": str(base), "CLASSFORGE_MODEL_POLL_SECONDS": "0.2",
        "CLASSFORGE_GRPC_PORT": str(MODEL_SERVER_GRPC), "CLASSFORGE_METRICS_PORT": str(MODEL_SERVER_METRICS),
        "CLASSFORGE_GRACE_SECONDS": "2", **PLAINTEXT_NO_AUTH})
    inference = start_service("inference", {
        **infra, "CLASSFORGE_S3_BUCKET": bucket, "CLASSFORGE_MODEL_BASE_PATH": str(base),
        "CLASSFORGE_MODEL_SERVER": f"127.0.0.1:{MODEL_SERVER_GRPC}", "CLASSFORGE_GRPC_PORT": str(INFERENCE_GRPC),
        "CLASSFORGE_METRICS_PORT": str(INFERENCE_METRICS), "CLASSFORGE_GRACE_SECONDS": "2",
        "CLASSFORGE_PUBLISH_TIMEOUT_SECONDS": "60"})

    # Meanwhile: the trainer's export in MinIO (saved_model.pb uploaded last, as the trainer does).
    export = toy_model.build(tmp_path / "export", seed=7)
    store = MinioObjectStore(infra["CLASSFORGE_S3_ENDPOINT"], infra["CLASSFORGE_S3_ACCESS_KEY"],
                             infra["CLASSFORGE_S3_SECRET_KEY"], bucket)
    files = sorted((p for p in export.rglob("*") if p.is_file()), key=lambda p: p.name == "saved_model.pb")
    for path in files:
        store.put_file(f"models/it-job/saved_model/{path.relative_to(export)}", path)
    uri = store.uri("models/it-job/saved_model") + "/"
    image = toy_model.png(20, 14, seed=3)
    reference = tf.saved_model.load(str(export)).signatures["serving_default"](image_bytes=tf.constant([image]))

    channel = grpc.insecure_channel(f"127.0.0.1:{INFERENCE_GRPC}")
    for name, service, address in (("model_server", model_server, MODEL_SERVER_GRPC),
                                   ("inference", inference, INFERENCE_GRPC)):
        try:
            wait_until_serving(grpc.insecure_channel(f"127.0.0.1:{address}"), timeout=90)
        except TimeoutError:
            pytest.fail(f"{name} never became SERVING:\n{service.log()}")
    stub = pb_grpc.InferenceServiceStub(channel)
    consumer = positioned_consumer(infra)
    bus = KafkaEventBus(KafkaBusConfig(infra["CLASSFORGE_KAFKA_BOOTSTRAP"], client_id="it-inference",
                                       **topics(infra)))

    blessed_job, unblessed_job = f"it-{uuid.uuid4()}", f"it-{uuid.uuid4()}"
    spec = common_pb2.JobSpec(deploy=common_pb2.DeployOptions(deploy=True, model_name="it-model"))
    unblessed = new_event(unblessed_job, "evaluator", evaluation_completed=events_pb2.EvaluationCompleted(
        model=common_pb2.ModelRef(job_id=unblessed_job, uri=uri), blessed=False, reasons=["accuracy too low"]))
    for event in (
        new_event(unblessed_job, "jobs", job_submitted=events_pb2.JobSubmitted(spec=spec)),
        unblessed,
        new_event(blessed_job, "jobs", job_submitted=events_pb2.JobSubmitted(spec=spec)),
        new_event(blessed_job, "evaluator", evaluation_completed=events_pb2.EvaluationCompleted(
            model=common_pb2.ModelRef(job_id=blessed_job, uri=uri), blessed=True, accuracy=0.95)),
    ):
        bus.publish(event)
    bus.close()

    jobs = {blessed_job, unblessed_job}
    events = read_events(consumer, jobs, 60, until=lambda found: kinds(found, blessed_job, "model_deployed"))
    events += read_events(consumer, jobs, 3)  # anything published twice would show up here
    deployed = kinds(events, blessed_job, "model_deployed")
    assert len(deployed) == 1, f"{events}\n{inference.log()[-4000:]}"
    ref = deployed[0].model_deployed.model
    assert (ref.job_id, ref.model_name, ref.version, ref.uri) == (blessed_job, "it-model", 1, uri)
    assert deployed[0].producer == "inference"
    assert (base / "it-model" / "1" / "saved_model.pb").is_file()

    response = stub.Classify(pb.ClassifyRequest(image=image, model_name="it-model", top_k=3), timeout=10)
    assert (response.model_name, response.version) == ("it-model", 1)
    label = next(p for p in response.predictions if p.task == "label")
    got = np.zeros(3, np.float32)
    for score in label.top:
        got[score.class_id] = score.probability
    np.testing.assert_allclose(got, reference["probabilities_label"].numpy()[0], rtol=1e-6)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Classify(pb.ClassifyRequest(image=b"GIF89a-not-really", model_name="it-model"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (model,) = stub.ListModels(pb.ListModelsRequest(model_name="it-model"), timeout=10).models
    assert [(v.version, v.job_id, v.serving) for v in model.versions] == [(1, blessed_job, True)]

    # The unblessed evaluation was handled (its event id is in the service's dedup log) and left no trace.
    processed = ObjectStoreProcessedEvents(store)
    deadline = time.monotonic() + 30
    while not processed.seen("inference", unblessed.event_id):
        assert time.monotonic() < deadline, inference.log()[-4000:]
        time.sleep(0.5)
    assert not [e for e in events if e.job_id == unblessed_job and e.producer == "inference"]
    assert sorted(p.name for p in (base / "it-model").iterdir() if not p.name.startswith(".")) == ["1"]

    consumer.close()
    channel.close()
    assert inference.terminate() == 0, inference.log()[-4000:]
    assert model_server.terminate() == 0, model_server.log()[-4000:]
