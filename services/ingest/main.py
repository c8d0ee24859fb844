"""Entry point of the ingest service (`python -m services.ingest.main` or `classforge serve ingest`)."""

from __future__ import annotations

import sys

from classforge.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from services.common.runtime import ServiceContext, run_service
from services.ingest.confine import parse_roots
from services.ingest.domain import IngestDomain
from services.ingest.servicer import IngestServicer
from services.ingest.settings import IngestSettings

SERVICE_NAME = ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name


def build(context: ServiceContext) -> None:
    settings = context.settings
    assert isinstance(settings, IngestSettings)
    domain = IngestDomain(
        context.store, context.bus,
        limits=settings.limits(),
        workers=settings.workers or None, work_dir=settings.work_dir or None,
        local_roots=parse_roots(settings.local_roots), heartbeat_seconds=settings.heartbeat_seconds)
    context.server.add_service(ingest_service_pb2_grpc.add_IngestServiceServicer_to_server,
                               IngestServicer(domain), SERVICE_NAME)
    # Consuming needs Kafka and the object store (the dedup log); readiness covers both.
    context.server.on_ready(lambda: context.bus.subscribe("ingest", domain.handle, kinds=["job_submitted"]))


def main() -> int:
    return run_service("ingest", build, IngestSettings)


if __name__ == "__main__":
    sys.exit(main())
