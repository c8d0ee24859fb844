"""The tfrecords service as its own process against the real infrastructure: a dataset in MinIO, a build
over gRPC (encoded by worker processes that fetch from MinIO), the records read back from MinIO with the
reader, dataset_prepared -> records_built on real Kafka answered once per job even when redelivered,
and the build metrics in Prometheus."""

import time
import uuid

import grpc
import pytest
from kafka import KafkaConsumer

from classforge.v1 import common_pb2, events_pb2
from classforge.v1 import tfrecords_service_pb2 as pb
from classforge.v1 import tfrecords_service_pb2_grpc as pb_grpc
from services.common import image_hash
from services.common.events import ObjectStoreProcessedEvents, new_event
from services.common.events.kafka import KafkaBusConfig, KafkaEventBus
from services.common.grpc_server import wait_until_serving
from services.common.records.reader import RecordsReader
from services.common.storage.minio import MinioObjectStore
from services.tfrecords.main import CONSUMER_GROUP
from tests.integration.kafka_topic import positioned_consumer, topics
from tests.support.sample_dataset import DIGIT_TASKS, digits_items, oversample, write_dataset

pytestmark = pytest.mark.integration

# The ports deploy/local/prometheus.yml scrapes for the tfrecords service.
GRPC_PORT, METRICS_PORT = 50053, 9103
Status = pb.BuildStatus


def collect(consumer: KafkaConsumer, found: dict[str, list], until, timeout: float = 60.0) -> None:
    """Files every event by job id into `found` until until(found) holds (AssertionError after timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        for record in consumer:
            found.setdefault(record.key.decode(), []).append(events_pb2.Event.FromString(record.value))
        if until(found):
            return
        assert time.monotonic() < deadline, f"events so far: {found}"


def prepared(job_id: str, dataset_id: str) -> events_pb2.Event:
    return new_event(job_id, "ingest", dataset_prepared=events_pb2.DatasetPrepared(
        dataset=common_pb2.DatasetRef(dataset_id=dataset_id)))


def kinds(events: list) -> list[str]:
    return [e.WhichOneof("payload") for e in events if e.producer == "tfrecords"
            and e.WhichOneof("payload") != "stage_heartbeat"]


def test_tfrecords_service_builds_from_minio_over_grpc_and_kafka(infra, prometheus, start_service, tmp_path):
    bucket = f"it-tfrecords-{uuid.uuid4().hex[:8]}"
    env = {**infra, "CLASSFORGE_S3_BUCKET": bucket, "CLASSFORGE_GRPC_PORT": str(GRPC_PORT),
           "CLASSFORGE_METRICS_PORT": str(METRICS_PORT), "CLASSFORGE_GRACE_SECONDS": "5",
           "CLASSFORGE_TFRECORDS_WORKERS": "2", "CLASSFORGE_TFRECORDS_READ_PARALLELISM": "2"}
    store = MinioObjectStore(infra["CLASSFORGE_S3_ENDPOINT"], infra["CLASSFORGE_S3_ACCESS_KEY"],
                             infra["CLASSFORGE_S3_SECRET_KEY"], bucket)
    items = digits_items(70, tasks=2)
    # 5,500 training lines over 50 images: enough for the worker processes (each fetching from MinIO)
    write_dataset(store, "big", {"train": oversample(items[:50], [110] * 50), "val": items[50:60]}, DIGIT_TASKS,
                  hashes=True)  # hashes.tsv, as ingest writes it: the records carry image/dhash
    write_dataset(store, "small", {"train": items[60:66], "val": items[66:]}, DIGIT_TASKS)
    write_dataset(store, "unfinished", {"train": items[:2]}, DIGIT_TASKS, complete=False)

    service = start_service("tfrecords", env)
    channel = grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}")
    try:
        wait_until_serving(channel, timeout=90)
    except TimeoutError:
        pytest.fail(f"tfrecords never became SERVING:\n{service.log()}")
    stub = pb_grpc.TFRecordsServiceStub(channel)

    # gRPC: start, poll, read back from MinIO.
    build = stub.BuildRecords(pb.BuildRecordsRequest(dataset_id="big"), timeout=10).build
    deadline = time.monotonic() + 120
    while build.status == Status.BUILD_STATUS_RUNNING:
        assert time.monotonic() < deadline, f"build still running:\n{service.log()}"
        time.sleep(0.2)
        build = stub.GetBuild(pb.GetBuildRequest(build_id=build.build_id), timeout=10).build
    assert build.status == Status.BUILD_STATUS_SUCCEEDED, f"{build.error}\n{service.log()}"
    assert (build.train_examples, build.val_examples) == (5500, 10)
    assert build.records_uri == f"s3://{bucket}/records/{build.build_id}"

    reader = RecordsReader(store, build.records_uri, cache_dir=tmp_path / "cache")
    listed = [line.split() for line in store.get_bytes("datasets/big/train.list").decode().splitlines()]
    back = list(reader.dataset("train", parallel_reads=1, decode=False, dhash=True).as_numpy_iterator())
    assert [[b["filename"].decode(), *map(str, b["labels"])] for b in back] == listed
    hashes = image_hash.parse_hashes(store.get_bytes(f"datasets/big/{image_hash.HASHES_FILE}"))
    assert all(b["has_dhash"] and int(b["dhash"]) & (2**64 - 1) == hashes[b["source_id"].decode()] for b in back)
    first = back[0]
    assert first["encoded"] == store.get_bytes(f"datasets/big/{first['filename'].decode()}")
    decoded = next(reader.dataset("val", batch_size=10).as_numpy_iterator())
    assert decoded["image"].shape == (10, 16, 16, 3)
    assert len(list((tmp_path / "cache" / build.build_id).glob("*.tfrecord"))) == 2 + 2  # train and val shards

    for request, code in [(pb.BuildRecordsRequest(dataset_id="nope"), grpc.StatusCode.NOT_FOUND),
                          (pb.BuildRecordsRequest(dataset_id="unfinished"), grpc.StatusCode.FAILED_PRECONDITION),
                          (pb.BuildRecordsRequest(dataset_id=""), grpc.StatusCode.INVALID_ARGUMENT)]:
        with pytest.raises(grpc.RpcError) as caught:
            stub.BuildRecords(request, timeout=10)
        assert caught.value.code() == code, caught.value.details()

    # Kafka: dataset_prepared -> records_built, once per job even when redelivered with a new event id.
    consumer = positioned_consumer(infra)
    bus = KafkaEventBus(KafkaBusConfig(infra["CLASSFORGE_KAFKA_BOOTSTRAP"],
                                       client_id=f"it-tfrecords-{uuid.uuid4().hex[:6]}", **topics(infra)))
    try:
        job_id, failing_job = f"it-{uuid.uuid4()}", f"it-{uuid.uuid4()}"
        bus.publish(prepared(job_id, "small"))
        bus.publish(prepared(failing_job, "unfinished"))
        seen: dict[str, list] = {}
        collect(consumer, seen, lambda found: "records_built" in kinds(found.get(job_id, [])))
        built = next(e for e in seen[job_id] if e.WhichOneof("payload") == "records_built").records_built
        assert (built.dataset_id, built.train_examples, built.val_examples) == ("small", 6, 4)
        assert RecordsReader(store, built.records_uri, cache_dir=tmp_path / "cache").num_examples("val") == 4

        again = prepared(job_id, "small")
        bus.publish(again)
        processed = ObjectStoreProcessedEvents(store).key(CONSUMER_GROUP, again.event_id)
        deadline = time.monotonic() + 60
        while not store.exists(processed):  # the service handled the redelivery ...
            assert time.monotonic() < deadline, f"redelivered event never processed:\n{service.log()}"
            time.sleep(0.2)
        time.sleep(2)
        collect(consumer, seen, lambda found: kinds(found.get(failing_job, [])))
        assert kinds(seen[job_id]) == ["records_built"]  # ... and published nothing more
        failed = [e for e in seen[failing_job] if e.producer == "tfrecords"
                  and e.WhichOneof("payload") != "stage_heartbeat"]
        assert kinds(failed) == ["stage_failed"]
        assert failed[0].stage_failed.stage == common_pb2.JOB_STAGE_RECORDS
        assert "'unfinished' is incomplete" in failed[0].stage_failed.message
    finally:
        bus.close()
        consumer.close()

    assert prometheus.wait_for_value('up{job="tfrecords"}', lambda v: v == 1) == 1
    assert prometheus.wait_for_value(
        'sum(classforge_tfrecords_examples_written_total{job="tfrecords"})', lambda v: v >= 5500 + 10 + 10) >= 5520
    prometheus.wait_for_value('classforge_tfrecords_build_duration_seconds_count{job="tfrecords"}', lambda v: v >= 2)
    assert service.terminate() == 0, service.log()
    channel.close()
