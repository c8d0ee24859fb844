"""Entry point of the inference service (`python -m services.inference.main`)."""

from __future__ import annotations

import sys

from classforge.third_party.kserve import grpc_predict_v2_pb2_grpc
from classforge.v1 import inference_service_pb2, inference_service_pb2_grpc
from services.common.auth import client_token
from services.common.http_server import HttpServer
from services.common.runtime import ServiceContext, run_service
from services.common.tls import client_tls
from services.inference import v2_servicer
from services.inference.classifier import Classifier
from services.inference.domain import InferenceDomain
from services.inference.http_api import build_app
from services.inference.model_server_client import ModelServerClient
from services.inference.publisher import Publisher
from services.inference.repository import ModelRepository
from services.inference.servicer import InferenceServicer
from services.inference.settings import InferenceSettings

SERVICE_NAME = inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
GROUP = "inference"
KINDS = ["job_submitted", "evaluation_completed"]


def build_domain(settings: InferenceSettings, store, bus) -> InferenceDomain:
    # The model server checks callers too: this service presents its client certificate (an mTLS identity) or
    # CLASSFORGE_TOKEN / CLASSFORGE_TOKEN_FILE. Publishing reloads the model server's config, which needs admin.
    tls = client_tls(settings)  # the model server is called with this service's own TLS settings
    client = ModelServerClient(settings.model_server, settings.max_message_bytes, tls=tls, plaintext=tls is None,
                               token=client_token())
    repo = ModelRepository(settings.model_base_path)
    publisher = Publisher(store, bus, repo, client, server_base_path=settings.server_base_path,
                          keep_versions=settings.keep_versions, default_model=settings.default_model,
                          serving_label=settings.serving_label, publish_timeout=settings.publish_timeout,
                          heartbeat_seconds=settings.heartbeat_seconds)
    classifier = Classifier(client, repo, default_model=settings.default_model, serving_label=settings.serving_label,
                            default_top_k=settings.default_top_k, max_image_bytes=settings.max_image_bytes,
                            max_image_pixels=settings.max_image_pixels, max_batch_images=settings.max_batch_images,
                            predict_timeout=settings.predict_timeout, stream_window=settings.stream_window,
                            batch_max_size=settings.batch_max_size, batch_wait_ms=settings.batch_wait_ms,
                            on_label_missing=publisher.request_reconcile)
    return InferenceDomain(classifier, publisher)


def build(context: ServiceContext) -> None:
    settings: InferenceSettings = context.settings  # type: ignore[assignment]
    domain = build_domain(settings, context.store, context.bus)
    context.server.readiness_checks["model_server"] = domain.check_model_server
    context.server.readiness_checks["model_base_path"] = domain.check_model_base_path
    context.server.add_service(inference_service_pb2_grpc.add_InferenceServiceServicer_to_server,
                               InferenceServicer(domain), SERVICE_NAME)

    def ready() -> bool:
        return context.server.serving

    context.server.add_service(grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
                               v2_servicer.OpenInferenceServicer(domain, ready), v2_servicer.SERVICE_NAME)

    def start() -> None:
        domain.start(settings.reconcile_seconds)  # the model server serves the chosen versions before SERVING
        context.bus.subscribe(GROUP, domain.handle, kinds=KINDS)

    context.server.on_ready(start)
    context.server.on_stop(domain.close)
    if settings.rest_port >= 0:
        http = HttpServer(context.name, build_app(domain, ready=ready, max_body_bytes=settings.max_message_bytes,
                                                    authenticator=context.authenticator),
                          port=settings.rest_port, host=settings.listen_host, grace_seconds=settings.grace_seconds,
                          # HTTPS with the gRPC port's certificate, reloaded the same way; plain HTTP only where
                          # gRPC is plaintext too (CLASSFORGE_GRPC_PLAINTEXT=true).
                          ssl_context=context.server.tls.https_context() if context.server.tls else None)
        # Its own start-up step, so that a port in use is retried alone. Stop hooks run last-registered first:
        # REST drains before the domain closes the classifier and the model server channel.
        context.server.on_ready(http.start)
        context.server.on_stop(http.stop)


def main() -> int:
    return run_service("inference", build, InferenceSettings)


if __name__ == "__main__":
    sys.exit(main())
