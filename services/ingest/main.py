"""Entry point of the ingest service (`python -m services.ingest.main` or `classforge serve ingest`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from classforge.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from services.common.runtime import ServiceContext, run_service
from services.common.settings import ServiceSettings, env
from services.ingest.domain import IngestDomain
from services.ingest.options import SourceLimits
from services.ingest.servicer import IngestServicer

SERVICE_NAME = ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
_DEFAULT_LIMITS = SourceLimits()


@dataclass(frozen=True)
class IngestSettings(ServiceSettings):
    max_upload_bytes: int = env("CLASSFORGE_INGEST_MAX_UPLOAD_BYTES", _DEFAULT_LIMITS.max_upload_bytes,
                                "largest archive CreateDataset accepts (RESOURCE_EXHAUSTED beyond)")
    max_file_bytes: int = env("CLASSFORGE_INGEST_MAX_FILE_BYTES", _DEFAULT_LIMITS.max_file_bytes,
                              "largest single image file; larger ones are rejected (too-large)")
    max_total_bytes: int = env("CLASSFORGE_INGEST_MAX_TOTAL_BYTES", _DEFAULT_LIMITS.max_total_bytes,
                               "most bytes an archive or a prefix may expand to")
    max_files: int = env("CLASSFORGE_INGEST_MAX_FILES", _DEFAULT_LIMITS.max_files,
                         "most entries in an archive or objects under a prefix")
    workers: int = env("CLASSFORGE_INGEST_WORKERS", 0,
                       "CPUs validating images (worker processes plus the calling thread); 0 means all")
    work_dir: str = env("CLASSFORGE_INGEST_WORK_DIR", "", "where uploads are spooled and extracted; "
                                                          "empty means the system temp folder")
    local_roots: str = env("CLASSFORGE_INGEST_LOCAL_ROOTS", "",
                           "':'-separated folders a local_path source must lie in; empty allows any")


def build(context: ServiceContext) -> None:
    settings = context.settings
    assert isinstance(settings, IngestSettings)
    domain = IngestDomain(
        context.store, context.bus,
        limits=SourceLimits(settings.max_upload_bytes, settings.max_file_bytes, settings.max_total_bytes,
                            settings.max_files),
        workers=settings.workers or None, work_dir=settings.work_dir or None,
        local_roots=[r for r in settings.local_roots.split(":") if r], heartbeat_seconds=settings.heartbeat_seconds)
    context.server.add_service(ingest_service_pb2_grpc.add_IngestServiceServicer_to_server,
                               IngestServicer(domain), SERVICE_NAME)
    # Consuming needs Kafka and the object store (the dedup log); readiness covers both.
    context.server.on_ready(lambda: context.bus.subscribe("ingest", domain.handle, kinds=["job_submitted"]))


def main() -> int:
    return run_service("ingest", build, IngestSettings)


if __name__ == "__main__":
    sys.exit(main())
