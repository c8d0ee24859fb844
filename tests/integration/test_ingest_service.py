"""The ingest service as its own process against the real Kafka, MinIO and Prometheus:

- an archive streamed over gRPC with corrupt, truncated, zero-byte, duplicate, label-conflicting and
  path-traversal entries: the report lists each with its reason and every good image arrives in MinIO;
- a job_submitted event naming an object prefix: dataset_prepared is published once for the job,
  and redelivering the job (a new event id, same job) makes no second dataset and no second event.
"""

import hashlib
import io
import json
import time
import uuid

import grpc
import pytest
from kafka import KafkaConsumer
from PIL import Image

from classforge.v1 import common_pb2, events_pb2
from classforge.v1 import ingest_service_pb2 as pb
from classforge.v1 import ingest_service_pb2_grpc as pb_grpc
from services.common.events import KafkaEventBus, new_event
from services.common.grpc_server import wait_until_serving
from services.common.storage import MinioObjectStore
from services.demo_data import load_digits
from tests.archives import tar_gz
from tests.integration.kafka_topic import positioned_consumer, topics

pytestmark = pytest.mark.integration

# The ports deploy/local/prometheus.yml scrapes for the ingest service.
INGEST_GRPC, INGEST_METRICS = 50052, 9102


def png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def digit_pngs(per_class: int) -> dict[str, bytes]:
    images, labels, names = load_digits()
    files, counts = {}, {}
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        if counts.get(int(label), 0) < per_class:
            counts[int(label)] = counts.get(int(label), 0) + 1
            files[f"digits/{names[label]}/{index:05d}.png"] = png(image)
    return files


def ingest_events(consumer: KafkaConsumer, job_id: str, wait: float, until_found: bool) -> list[events_pb2.Event]:
    """The ingest service's events for `job_id` seen within `wait` seconds (returns early once one
    arrived when until_found)."""
    deadline, found = time.monotonic() + wait, []
    while time.monotonic() < deadline and not (until_found and found):
        for record in consumer:
            if record.key == job_id.encode():
                event = events_pb2.Event.FromString(record.value)
                if event.producer == "ingest" and event.WhichOneof("payload") != "stage_heartbeat":
                    found.append(event)
    return found


@pytest.fixture
def service(infra, start_service):
    bucket = f"it-ingest-{uuid.uuid4().hex[:8]}"
    env = {**infra, "CLASSFORGE_S3_BUCKET": bucket, "CLASSFORGE_GRPC_PORT": str(INGEST_GRPC),
           "CLASSFORGE_METRICS_PORT": str(INGEST_METRICS), "CLASSFORGE_GRACE_SECONDS": "5"}
    process = start_service("ingest", env)
    channel = grpc.insecure_channel(f"127.0.0.1:{INGEST_GRPC}")
    try:
        wait_until_serving(channel, timeout=90)
    except TimeoutError:
        pytest.fail(f"ingest never became SERVING:\n{process.log()}")
    store = MinioObjectStore(infra["CLASSFORGE_S3_ENDPOINT"], infra["CLASSFORGE_S3_ACCESS_KEY"],
                             infra["CLASSFORGE_S3_SECRET_KEY"], bucket)
    yield pb_grpc.IngestServiceStub(channel), store, process
    channel.close()
    assert process.terminate() == 0, process.log()


def test_an_upload_with_bad_entries_is_reported_and_every_good_image_arrives(service, prometheus):
    stub, store, process = service
    good = digit_pngs(per_class=8)
    names = sorted(good)
    bad = {
        "digits/3/corrupt.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
        "digits/4/truncated.png": good[names[40]][: len(good[names[40]]) // 2],
        "digits/5/zero.png": b"",
        "digits/6/duplicate.png": good[names[50]],  # same content and label as names[50]
        "digits/7/conflict.png": good[names[70]],  # names[70] is an 8: same content, another label
        "digits/../../escape.png": good[names[10]],
    }
    assert names[50].startswith("digits/6/") and names[70].startswith("digits/8/")
    archive = tar_gz({**good, **bad})

    def requests():
        yield pb.CreateDatasetRequest(header=pb.CreateDatasetHeader(
            archive_format=pb.ARCHIVE_FORMAT_TAR_GZ, request_id=f"it-{uuid.uuid4()}",
            options=common_pb2.DatasetOptions(val_fraction=0.25, seed=11)))
        for i in range(0, len(archive), 16 * 1024):
            yield pb.CreateDatasetRequest(chunk=archive[i:i + 16 * 1024])

    dataset = stub.CreateDataset(requests(), timeout=120).dataset
    dataset_id = dataset.ref.dataset_id
    assert dataset.ref.uri == f"s3://{store.bucket}/datasets/{dataset_id}"
    assert dataset.image_count == 79 and dataset.val_count == 20 and dataset.rejected_count == 7

    reply = stub.GetDatasetReport(pb.GetDatasetReportRequest(dataset_id=dataset_id), timeout=30)
    reasons = {r.path: r.reason.split(":")[0] for r in reply.report.rejected}
    assert reasons == {
        # the archive's single top folder is unwrapped: names are relative to it
        "3/corrupt.png": "corrupt", "4/truncated.png": "corrupt", "5/zero.png": "empty-file",
        "6/duplicate.png": "duplicate", "7/conflict.png": "label-conflict", names[70][7:]: "label-conflict",
        "digits/../../escape.png": "unsafe-path"}
    assert reply.report.duplicate_count == 1 and reply.report.label_conflict_count == 1
    assert "label-conflict" in reply.markdown

    prefix = f"datasets/{dataset_id}/"
    expected = {hashlib.sha256(data).hexdigest() for name, data in good.items() if name != names[70]}
    stored = {info.key.rsplit("/", 1)[1].split(".")[0]: info for info in store.list(prefix + "images/")}
    assert set(stored) == expected
    for sha, info in stored.items():
        assert info.sha256 == sha and info.key == f"{prefix}images/{sha[:2]}/{sha}.png"
    lines = store.get_bytes(prefix + "train.list").decode().splitlines()
    assert {line.split()[0].rsplit("/", 1)[1][:-4] for line in lines} <= expected
    manifest = json.loads(store.get_bytes(prefix + "manifest.json"))
    assert manifest["counts"]["images"] == 79 and manifest["files"]["train.list"]["lines"] == len(lines)

    assert prometheus.wait_for_value('up{job="ingest"}', lambda v: v == 1) == 1
    prometheus.wait_for_value('classforge_ingest_images_total{job="ingest",outcome="valid"}', lambda v: v >= 81)
    prometheus.wait_for_value('classforge_ingest_datasets_total{job="ingest",result="prepared"}', lambda v: v >= 1)


def test_a_job_event_makes_one_dataset_and_one_dataset_prepared_event(service, infra):
    stub, store, process = service
    # 300 images: above the pool threshold, so the service validates them on its forkserver workers
    for name, data in digit_pngs(per_class=30).items():
        store.put_bytes(f"uploads/it-job/{name[len('digits/'):]}", data)
    consumer = positioned_consumer(infra)
    bus = KafkaEventBus(infra["CLASSFORGE_KAFKA_BOOTSTRAP"], client_id="it-ingest-test", **topics(infra))
    job_id = f"it-{uuid.uuid4()}"
    spec = common_pb2.JobSpec(source=common_pb2.DataSource(object_prefix="uploads/it-job/"),
                              dataset=common_pb2.DatasetOptions(seed=2, val_fraction=0.2))
    try:
        bus.publish(new_event(job_id, "jobs", job_submitted=events_pb2.JobSubmitted(spec=spec)))
        [event] = ingest_events(consumer, job_id, wait=90, until_found=True)
        assert event.WhichOneof("payload") == "dataset_prepared", event
        prepared = event.dataset_prepared
        dataset_id = f"ds-{job_id}"
        assert prepared.dataset.dataset_id == dataset_id
        assert prepared.dataset.uri == f"s3://{store.bucket}/datasets/{dataset_id}"
        assert (prepared.train_count, prepared.val_count, prepared.test_count) == (240, 60, 0)
        manifest = store.get_bytes(f"datasets/{dataset_id}/manifest.json")
        assert stub.GetDataset(pb.GetDatasetRequest(dataset_id=dataset_id), timeout=30).dataset.ref == \
            prepared.dataset

        # redelivery: the same job, a new event id
        bus.publish(new_event(job_id, "jobs", job_submitted=events_pb2.JobSubmitted(spec=spec)))
        assert ingest_events(consumer, job_id, wait=8, until_found=False) == []
    finally:
        bus.close()
        consumer.close()
    assert store.get_bytes(f"datasets/{dataset_id}/manifest.json") == manifest
    listed = stub.ListDatasets(pb.ListDatasetsRequest(page_size=500), timeout=30).datasets
    assert [d.ref.dataset_id for d in listed].count(dataset_id) == 1
    log = process.log()
    assert len([line for line in log.splitlines() if '"dataset prepared for job"' in line]) == 1
    assert '"start_method": "forkserver"' in log  # the service has threads: workers come from a forkserver
