"""A service whose Kafka and object store are unreachable stays up, NOT_SERVING, and retries:
no crash loop. SIGTERM still stops it cleanly."""

import time
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import PLAINTEXT_NO_AUTH

UNREACHABLE = {
    "CLASSFORGE_KAFKA_BOOTSTRAP": "127.0.0.1:9",
    "CLASSFORGE_S3_ENDPOINT": "127.0.0.1:9",
    "CLASSFORGE_S3_ACCESS_KEY": "a",
    "CLASSFORGE_S3_SECRET_KEY": "b",
    "CLASSFORGE_GRPC_PORT": "50151",
    "CLASSFORGE_METRICS_PORT": "9151",
    "CLASSFORGE_GRACE_SECONDS": "2",
    **PLAINTEXT_NO_AUTH,
}


def test_unreachable_dependencies_keep_health_not_serving_without_crashing(start_service):
    service = start_service("jobs", UNREACHABLE)
    channel = grpc.insecure_channel("127.0.0.1:50151")
    health = health_pb2_grpc.HealthStub(channel)
    statuses = []
    deadline = time.monotonic() + 90
    # Watch until the service has run its readiness checks (and found both dependencies down)
    # at least twice, i.e. it retries instead of exiting, and has answered a health check. On a
    # loaded machine the two checks can come before the first answer: wait for both conditions.
    while time.monotonic() < deadline and (service.log().count("unreachable") < 2 or not statuses):
        try:
            statuses.append(health.Check(health_pb2.HealthCheckRequest(), timeout=2).status)
        except grpc.RpcError:
            pass  # still starting
        time.sleep(0.5)
        assert service.alive(), service.log()
    assert service.log().count("unreachable") >= 2, f"readiness never reported the outage:\n{service.log()}"
    assert statuses and set(statuses) == {health_pb2.HealthCheckResponse.NOT_SERVING}
    metrics = urllib.request.urlopen("http://127.0.0.1:9151/metrics", timeout=5).read().decode()
    assert 'classforge_service_ready{service="jobs"} 0.0' in metrics
    assert 'classforge_dependency_up{dependency="kafka",service="jobs"} 0.0' in metrics
    assert 'classforge_dependency_up{dependency="object_store",service="jobs"} 0.0' in metrics
    assert service.terminate(timeout=30) == 0, service.log()
    channel.close()
