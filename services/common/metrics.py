"""Prometheus metrics shared by every service. Each metric is defined once here so
names and labels stay consistent across services (dashboards and alert rules rely on them)."""

from __future__ import annotations

import hashlib
import logging
import ssl
import threading
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


log = logging.getLogger("classforge.metrics")


def serve_metrics(port: int, host: str = "0.0.0.0", *, certfile: str = "", keyfile: str = ""):
    """Starts the /metrics endpoint, over HTTPS (TLS 1.2+) when `certfile` and `keyfile` are given; returns
    the server so it can be shut down, or None if disabled. A renewed certificate (the files rewritten, e.g.
    by cert-manager) is served from the next connection on, without a restart."""
    if port < 0:
        return None
    if bool(certfile) != bool(keyfile):
        raise ValueError("serving /metrics over TLS needs both a certificate and its key")
    server, _thread = start_http_server(port, addr=host, certfile=certfile or None, keyfile=keyfile or None,
                                        tls_min_version=ssl.TLSVersion.TLSv1_2 if certfile else None)
    if certfile:
        reloader = _CertificateReloader(server.socket.context, certfile, keyfile)
        accept = server.get_request

        def get_request():  # called once a connection waits, before its handshake
            reloader.reload_if_changed()
            return accept()

        server.get_request = get_request
    return server


class _CertificateReloader:
    """Loads the certificate and key again into the server's SSL context when their contents change. The
    contents, not the modification times, are compared: a rewrite within one timestamp tick still counts.
    A half-written pair (key and certificate not matching yet) keeps the previous one until it is whole."""

    def __init__(self, context: ssl.SSLContext, certfile: str, keyfile: str):
        self._context, self._certfile, self._keyfile = context, certfile, keyfile
        self._lock = threading.Lock()
        self._digest = self._read_digest()

    def _read_digest(self) -> str | None:
        try:
            sha = hashlib.sha256()
            for path in (self._certfile, self._keyfile):
                with open(path, "rb") as file:
                    sha.update(file.read())
                sha.update(b"\0")
            return sha.hexdigest()
        except OSError:
            return None

    def reload_if_changed(self) -> None:
        with self._lock:
            digest = self._read_digest()
            if digest is None or digest == self._digest:
                return
            try:
                self._context.load_cert_chain(self._certfile, self._keyfile)
            except (OSError, ssl.SSLError) as exc:
                log.warning("metrics certificate changed but cannot be loaded yet (%s); serving the previous one",
                            exc.__class__.__name__)
                return
            self._digest = digest
            log.info("metrics certificate reloaded", extra={"certfile": self._certfile})


def metrics_tls_files(settings: ServiceSettings) -> dict[str, str]:
    """serve_metrics' certfile/keyfile for a service: CLASSFORGE_TLS_CERT/KEY when CLASSFORGE_METRICS_TLS is
    true, else plain HTTP. Raises SettingsError naming the variable when a file is missing."""
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
