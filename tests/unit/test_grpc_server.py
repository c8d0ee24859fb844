"""The shared gRPC bootstrap: error mapping, metrics, health readiness, reflection, graceful stop.
Runs a real gRPC server on a loopback port with the jobs servicer over in-process adapters."""

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from classforge.v1 import common_pb2
from classforge.v1 import jobs_service_pb2 as pb
from classforge.v1 import jobs_service_pb2_grpc as pb_grpc
from services.common.errors import Unavailable
from services.common.events import InProcessEventBus
from services.common.grpc_server import GrpcServer, wait_until_serving
from services.common.storage import LocalObjectStore
from services.jobs.domain import JobsDomain
from services.jobs.main import SERVICE_NAME
from services.jobs.servicer import JobsServicer


class FlakyServicer(JobsServicer):
    """GetJob misbehaves on request: a bug (RuntimeError) or a slow call (to test draining)."""

    def GetJob(self, request, context):
        if request.job_id == "boom":
            raise RuntimeError("a bug")
        if request.job_id == "store-down":
            raise Unavailable("object store at 10.9.8.7:9000 cannot be reached: urllib3 MaxRetryError(...)")
        if request.job_id == "slow":
            time.sleep(1.5)
            return pb.GetJobResponse(job=pb.Job(job_id="slow"))
        return super().GetJob(request, context)


class Dependency:
    def __init__(self):
        self.up = False

    def check(self):
        if not self.up:
            raise ConnectionError("not reachable")


@pytest.fixture
def running(tmp_path):
    bus = InProcessEventBus()
    dependency = Dependency()
    server = GrpcServer("test", port=0, host="127.0.0.1", grace_seconds=5, plaintext=True,
                        readiness_checks={"fake": dependency.check}, recheck_seconds=0.1)
    server.add_service(pb_grpc.add_JobsServiceServicer_to_server,
                       FlakyServicer(JobsDomain(bus, LocalObjectStore(tmp_path))), SERVICE_NAME)
    stopped = []
    server.on_stop(lambda: stopped.append(True))
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield server, channel, dependency, stopped
    channel.close()
    server.stop()
    bus.close()


def counter(method: str, code: str) -> float:
    return REGISTRY.get_sample_value(
        "classforge_grpc_requests_total", {"service": "test", "method": method, "code": code}) or 0.0


def test_invalid_spec_is_invalid_argument_naming_the_field(running):
    _, channel, _, _ = running
    with pytest.raises(grpc.RpcError) as caught:
        pb_grpc.JobsServiceStub(channel).SubmitJob(pb.SubmitJobRequest(spec=common_pb2.JobSpec()), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("spec.source:")


def test_unknown_id_is_not_found_with_the_id(running):
    _, channel, _, _ = running
    with pytest.raises(grpc.RpcError) as caught:
        pb_grpc.JobsServiceStub(channel).GetJob(pb.GetJobRequest(job_id="no-such-job"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-job" in caught.value.details()


def test_unexpected_exception_is_internal_without_leaking_details(running):
    _, channel, _, _ = running
    with pytest.raises(grpc.RpcError) as caught:
        pb_grpc.JobsServiceStub(channel).GetJob(pb.GetJobRequest(job_id="boom"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "RuntimeError" in caught.value.details() and "a bug" not in caught.value.details()


def test_metrics_count_requests_by_method_and_code(running):
    _, channel, _, _ = running
    stub = pb_grpc.JobsServiceStub(channel)
    ok_before, missing_before = counter("SubmitJob", "OK"), counter("GetJob", "NOT_FOUND")
    spec = common_pb2.JobSpec(source=common_pb2.DataSource(local_path="/data"))
    job_id = stub.SubmitJob(pb.SubmitJobRequest(spec=spec), timeout=5).job_id
    assert stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=5).job.status == common_pb2.JOB_STATUS_PENDING
    with pytest.raises(grpc.RpcError):
        stub.GetJob(pb.GetJobRequest(job_id="missing"), timeout=5)
    assert counter("SubmitJob", "OK") == ok_before + 1
    assert counter("GetJob", "NOT_FOUND") == missing_before + 1
    latency = REGISTRY.get_sample_value("classforge_grpc_request_duration_seconds_count",
                                        {"service": "test", "method": "SubmitJob", "code": "OK"})
    assert latency >= 1


def test_health_follows_dependency_readiness(running):
    _, channel, dependency, _ = running
    health = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    time.sleep(0.3)
    assert health.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
    dependency.up = True
    wait_until_serving(channel, timeout=5, service=SERVICE_NAME)
    dependency.up = False
    deadline = time.monotonic() + 5
    while health.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.SERVING:
        assert time.monotonic() < deadline, "health stayed SERVING after the dependency went away"
        time.sleep(0.05)


def test_reflection_lists_the_service(running):
    _, channel, _, _ = running
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert SERVICE_NAME in names and "grpc.health.v1.Health" in names


def test_graceful_stop_lets_in_flight_calls_finish_then_runs_hooks(running):
    server, channel, _, stopped = running
    stub = pb_grpc.JobsServiceStub(channel)
    result = {}
    call = threading.Thread(target=lambda: result.update(
        reply=stub.GetJob(pb.GetJobRequest(job_id="slow"), timeout=10)))
    call.start()
    time.sleep(0.3)
    server.stop()
    call.join()
    assert result["reply"].job.job_id == "slow"
    assert stopped == [True]
    with pytest.raises(grpc.RpcError):
        stub.GetJob(pb.GetJobRequest(job_id="x"), timeout=2)


def test_an_outage_is_unavailable_without_addresses_or_library_internals(running):
    _, channel, _, _ = running
    with pytest.raises(grpc.RpcError) as caught:
        pb_grpc.JobsServiceStub(channel).GetJob(pb.GetJobRequest(job_id="store-down"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    details = caught.value.details()
    assert "retry later" in details and "10.9.8.7" not in details and "urllib3" not in details


def test_a_huge_id_is_never_echoed_back(running):
    _, channel, _, _ = running
    with pytest.raises(grpc.RpcError) as caught:
        pb_grpc.JobsServiceStub(channel).GetJob(pb.GetJobRequest(job_id="x" * 100_000), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(caught.value.details()) < 200
