"""Start-up and shutdown of a distributed service, the same for every service:
settings (and TLS files) -> JSON logs -> /metrics -> object store and Kafka -> gRPC server -> wait for SIGTERM.

A service's main module only says what is specific to it, in a `build(context)` function that
registers its servicer and its event subscriptions.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

from services.common.auth import Authenticator
from services.common.events import EventBus, ObjectStoreProcessedEvents
from services.common.grpc_server import GrpcServer
from services.common.logs import configure_logging
from services.common.metrics import metrics_tls_files, serve_metrics
from services.common.settings import ServiceSettings, SettingsError
from services.common.stage_work import Stage
from services.common.storage import ObjectStore
from services.common.tls import server_tls

log = logging.getLogger("classforge.runtime")


@dataclass
class ServiceContext:
    name: str
    settings: ServiceSettings
    store: ObjectStore
    bus: EventBus
    server: GrpcServer
    # Opens another connection to the same store, for worker processes (a client cannot be pickled).
    store_factory: Callable[[], ObjectStore]
    # Who may call: the gRPC server already checks; a service's other front doors (REST) use the same one.
    # None when auth is disabled (embedded mode, tests).
    authenticator: Authenticator | None = None

    def stage(self, stage: int) -> Stage:
        """The heartbeat, cancel and failure events of one pipeline stage, for this service."""
        return Stage(self.bus, self.store, stage, self.name, heartbeat_seconds=self.settings.heartbeat_seconds)


def connect(name: str, settings: ServiceSettings) -> tuple[Callable[[], ObjectStore], ObjectStore, EventBus]:
    """Opens the object store and the Kafka bus. Neither call blocks on the network: an
    unreachable dependency shows up in readiness, not as a crash at start-up."""
    # Imported here: embedded mode uses ServiceContext and the services' build() without ever loading
    # the Kafka and MinIO clients.
    from services.common.events.kafka import KafkaBusConfig, KafkaEventBus
    from services.common.storage.minio import MinioObjectStore

    store_factory = functools.partial(MinioObjectStore.from_settings, settings)
    store = store_factory()
    bus = KafkaEventBus(KafkaBusConfig.from_settings(settings, client_id=name), ObjectStoreProcessedEvents(store))
    return store_factory, store, bus


def run_service(name: str, build: Callable[[ServiceContext], None],
                settings_class: type[ServiceSettings] = ServiceSettings) -> int:
    """Runs the service until SIGTERM; returns the process exit code."""
    try:
        settings = settings_class.load()
    except SettingsError as exc:
        print(f"{name}: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(name, settings.log_level)
    grpc_port, metrics_port = settings.ports_for(name)
    # The security settings are checked together here, before anything listens: a bad TLS file, auth source or
    # Kafka/S3 security setting is a one-line refusal (exit 2), not a crash later.
    try:
        tls = server_tls(settings)
        authenticator = Authenticator.from_settings(settings)
        metrics_tls = metrics_tls_files(settings)
        store_factory, store, bus = connect(name, settings)
    except SettingsError as exc:
        print(f"{name}: configuration error: {exc}", file=sys.stderr)
        return 2
    metrics_server = serve_metrics(metrics_port, settings.listen_host, **metrics_tls)
    server = GrpcServer(
        name, port=grpc_port, host=settings.listen_host, max_message_bytes=settings.max_message_bytes,
        worker_threads=settings.worker_threads, grace_seconds=settings.grace_seconds,
        readiness_checks={"kafka": bus.ping, "object_store": store.ping, "event_consumers": bus.check_consumers},
        tls=tls, plaintext=tls is None, plaintext_health_port=settings.grpc_health_port,
        authenticator=authenticator,
    )
    server.on_stop(bus.close)  # registered first, so it runs last: flush events the hooks below emit
    if metrics_server is not None:
        server.on_stop(metrics_server.shutdown)
    try:
        build(ServiceContext(name, settings, store, bus, server, store_factory, authenticator))
    except SettingsError as exc:  # what build() reads itself, e.g. the TLS of a client it opens
        print(f"{name}: configuration error: {exc}", file=sys.stderr)
        server.stop()
        return 2
    server.start()
    log.info("started", extra={"grpc_port": server.port, "metrics_port": metrics_port})
    server.serve_until_signalled()
    return 0
