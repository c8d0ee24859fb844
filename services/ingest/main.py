"""Entry point of the ingest service (`python -m services.ingest.main` or `classforge serve ingest`)."""

from __future__ import annotations

import logging
import sys

from classforge.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from services.common.runtime import ServiceContext, run_service
from services.ingest.domain import IngestDomain
from services.ingest.servicer import IngestServicer
from services.ingest.settings import IngestSettings

log = logging.getLogger("classforge.ingest")

SERVICE_NAME = ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name


def build(context: ServiceContext) -> None:
    settings = context.settings
    assert isinstance(settings, IngestSettings)
    domain = IngestDomain(
        context.store, context.bus,
        limits=settings.limits(),
        workers=settings.workers or None, work_dir=settings.work_dir or None,
        local_roots=settings.local_root_list(), heartbeat_seconds=settings.heartbeat_seconds)
    if domain.local_roots:
        log.info("local paths allowed under these folders only", extra={"roots": list(domain.local_roots.roots)})
    else:
        log.info("local paths are disabled (CLASSFORGE_INGEST_LOCAL_ROOTS is empty): uploads and object "
                 "prefixes only")
    context.server.add_service(ingest_service_pb2_grpc.add_IngestServiceServicer_to_server,
                               IngestServicer(domain), SERVICE_NAME)
    # Consuming needs Kafka and the object store (the dedup log); readiness covers both.
    context.server.on_ready(lambda: context.bus.subscribe("ingest", domain.handle, kinds=["job_submitted"]))


def main() -> int:
    return run_service("ingest", build, IngestSettings)


if __name__ == "__main__":
    sys.exit(main())
