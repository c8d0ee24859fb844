"""Prometheus metrics shared by every service. Each metric is defined once here so
names and labels stay consistent across services (dashboards and alert rules rely on them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from services.common.settings import ServiceSettings

GRPC_REQUESTS = Counter(
    "classforge_grpc_requests_total",
    "gRPC requests handled, by service, method and status code.",
    ["service", "method", "code"],
)
GRPC_LATENCY = Histogram(
    "classforge_grpc_request_duration_seconds",
    "gRPC request latency, by service, method and status code.",
    ["service", "method", "code"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
SERVICE_READY = Gauge(
    "classforge_service_ready",
    "1 when the service's dependencies are reachable and it reports SERVING.",
    ["service"],
)
DEPENDENCY_UP = Gauge(
    "classforge_dependency_up",
    "1 when the last readiness check of a dependency succeeded.",
    ["service", "dependency"],
)


def serve_metrics(port: int, host: str = "0.0.0.0", *, certfile: str = "", keyfile: str = ""):
    """Starts the /metrics endpoint, over HTTPS when `certfile` and `keyfile` are given; returns the
    server so it can be shut down, or None if disabled."""
    if port < 0:
        return None
    if bool(certfile) != bool(keyfile):
        raise ValueError("serving /metrics over TLS needs both a certificate and its key")
    server, _thread = start_http_server(port, addr=host, certfile=certfile or None, keyfile=keyfile or None)
    return server


def metrics_tls_files(settings: ServiceSettings) -> dict[str, str]:
    """serve_metrics' certfile/keyfile for a service: CLASSFORGE_TLS_CERT/KEY when CLASSFORGE_METRICS_TLS is
    true, else plain HTTP. Raises SettingsError naming the variable when a file is missing. The files are
    read once at start: a renewed certificate is served after a restart."""
    from services.common.settings import SettingsError, check_readable_file

    if not settings.metrics_tls:
        return {}
    for name, path in (("CLASSFORGE_TLS_CERT", settings.tls_cert), ("CLASSFORGE_TLS_KEY", settings.tls_key)):
        if not path:
            raise SettingsError(f"{name} is required with CLASSFORGE_METRICS_TLS=true")
        check_readable_file(name, path)
    return {"certfile": settings.tls_cert, "keyfile": settings.tls_key}
DEAD_LETTERS = Counter(
    "classforge_events_dead_letters_total",
    "Events a consumer group gave up on and sent to the dead-letter topic, by group.",
    ["group"],
)
