"""The first service on the runtime, against the real infrastructure: a gRPC call becomes a Kafka
event, the service's state follows its own events, and Prometheus scrapes the request counter."""

import time
import uuid

import grpc
import pytest
from kafka import KafkaConsumer

from classforge.v1 import common_pb2, events_pb2
from classforge.v1 import jobs_service_pb2 as pb
from classforge.v1 import jobs_service_pb2_grpc as pb_grpc
from services.common.grpc_server import wait_until_serving
from tests.integration.kafka_topic import positioned_consumer

pytestmark = pytest.mark.integration

# The ports deploy/local/prometheus.yml scrapes for the jobs service.
JOBS_GRPC, JOBS_METRICS = 50051, 9101


def events_for(consumer: KafkaConsumer, job_id: str, timeout: float = 30.0) -> list[events_pb2.Event]:
    deadline, found = time.monotonic() + timeout, []
    while time.monotonic() < deadline and not found:
        for record in consumer:
            if record.key == job_id.encode():
                found.append(events_pb2.Event.FromString(record.value))
    return found


def test_submit_job_goes_grpc_to_kafka_to_prometheus(infra, prometheus, start_service):
    env = {**infra, "CLASSFORGE_S3_BUCKET": f"it-jobs-{uuid.uuid4().hex[:8]}",
           "CLASSFORGE_GRPC_PORT": str(JOBS_GRPC), "CLASSFORGE_METRICS_PORT": str(JOBS_METRICS),
           "CLASSFORGE_GRACE_SECONDS": "5"}
    service = start_service("jobs", env)
    channel = grpc.insecure_channel(f"127.0.0.1:{JOBS_GRPC}")
    try:
        wait_until_serving(channel, timeout=90)
    except TimeoutError:
        pytest.fail(f"jobs never became SERVING:\n{service.log()}")
    stub = pb_grpc.JobsServiceStub(channel)
    consumer = positioned_consumer(infra)

    spec = common_pb2.JobSpec(display_name="it", source=common_pb2.DataSource(object_prefix="uploads/it/"))
    job_id = stub.SubmitJob(pb.SubmitJobRequest(spec=spec), timeout=10).job_id

    events = events_for(consumer, job_id)
    assert len(events) == 1, events
    assert events[0].WhichOneof("payload") == "job_submitted"
    assert events[0].job_submitted.spec == spec and events[0].producer == "jobs"

    job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10).job
    assert job.status == common_pb2.JOB_STATUS_PENDING and job.spec == spec

    with pytest.raises(grpc.RpcError) as caught:
        stub.SubmitJob(pb.SubmitJobRequest(spec=common_pb2.JobSpec(
            source=common_pb2.DataSource(object_prefix="../escape"))), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.source.object_prefix" in caught.value.details()

    assert prometheus.wait_for_value('up{job="jobs"}', lambda v: v == 1) == 1
    submitted = prometheus.wait_for_value(
        'classforge_grpc_requests_total{job="jobs",method="SubmitJob",code="OK"}', lambda v: v >= 1)
    assert submitted >= 1
    prometheus.wait_for_value(
        'classforge_grpc_requests_total{job="jobs",method="SubmitJob",code="INVALID_ARGUMENT"}', lambda v: v >= 1)

    # WatchJob streams the job's history (here: the job_submitted event the service consumed).
    stream = stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=30)
    first = next(stream)
    assert first.event.event_id == events[0].event_id and first.job.job_id == job_id
    stream.cancel()

    # A restarted service answers the same: state is rebuilt from the object store.
    assert service.terminate() == 0, service.log()
    restarted = start_service("jobs", env)
    wait_until_serving(channel, timeout=90)
    assert stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10).job == job
    assert restarted.terminate() == 0
    consumer.close()
    channel.close()
