"""Entry point of the model server stand-in (`python -m services.model_server.main`).

It needs neither Kafka nor the object store, so it does not use services.common.runtime.run_service
(which connects both): readiness is "the model base path is readable", and the first poll of the
base path runs before health says SERVING.
"""

from __future__ import annotations

import logging
import sys

from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from services.common.auth import Authenticator
from services.common.grpc_server import GrpcServer
from services.common.logs import configure_logging
from services.common.metrics import serve_metrics
from services.common.settings import SettingsError
from services.common.tls import TlsConfig, server_tls
from services.model_server.core import ModelServerCore
from services.model_server.servicer import ModelServicer, PredictionServicer
from services.model_server.settings import SERVICE_NAME, ModelServerSettings

log = logging.getLogger("classforge.model_server")

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"


def build_server(settings: ModelServerSettings, core: ModelServerCore, port: int, *, tls: TlsConfig | None,
                 warn_plaintext: bool = True, authenticator: Authenticator | None = None) -> GrpcServer:
    """`tls` None serves plaintext (server_tls allowed it, or embedded mode on 127.0.0.1)."""
    server = GrpcServer(
        SERVICE_NAME, port=port, host=settings.listen_host, max_message_bytes=settings.max_message_bytes,
        worker_threads=settings.worker_threads, grace_seconds=settings.grace_seconds,
        readiness_checks={"model_base_path": core.check_base_path},
        tls=tls, plaintext=tls is None, warn_plaintext=warn_plaintext,
        plaintext_health_port=settings.grpc_health_port, authenticator=authenticator)
    server.add_service(prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server,
                       PredictionServicer(core), PREDICTION_SERVICE)
    server.add_service(model_service_pb2_grpc.add_ModelServiceServicer_to_server, ModelServicer(core), MODEL_SERVICE)
    server.on_ready(core.start)
    server.on_stop(core.stop)
    return server


def main() -> int:
    try:
        settings = ModelServerSettings.load()
        config = ModelServerCore.config_from_file(settings.model_config_file) if settings.model_config_file else None
        tls = server_tls(settings)
    except (SettingsError, ValueError) as exc:
        print(f"{SERVICE_NAME}: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(SERVICE_NAME, settings.log_level)
    try:
        authenticator = Authenticator.from_settings(settings)
    except SettingsError as exc:
        print(f"{SERVICE_NAME}: configuration error: {exc}", file=sys.stderr)
        return 2
    grpc_port, metrics_port = settings.ports()
    metrics_server = serve_metrics(metrics_port, settings.listen_host)
    core = ModelServerCore(settings.model_base_path, poll_seconds=settings.poll_seconds,
                           num_versions=settings.num_versions, config=config,
                           allow_labels_for_unavailable=settings.allow_labels_for_unavailable)
    server = build_server(settings, core, grpc_port, tls=tls, authenticator=authenticator)
    if metrics_server is not None:
        server.on_stop(metrics_server.shutdown)
    server.start()
    log.info("started", extra={"grpc_port": server.port, "metrics_port": metrics_port,
                                "model_base_path": settings.model_base_path})
    server.serve_until_signalled()
    return 0


if __name__ == "__main__":
    sys.exit(main())
