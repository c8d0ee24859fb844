"""Entry point of the jobs service (`python -m services.jobs.main` or `classforge serve jobs`)."""

from __future__ import annotations

import sys

from classforge.v1 import jobs_service_pb2, jobs_service_pb2_grpc
from services.common.runtime import ServiceContext, run_service
from services.jobs.domain import JobsDomain
from services.jobs.servicer import JobsServicer

SERVICE_NAME = jobs_service_pb2.DESCRIPTOR.services_by_name["JobsService"].full_name


def build(context: ServiceContext) -> None:
    domain = JobsDomain(context.bus, context.store)
    context.server.add_service(jobs_service_pb2_grpc.add_JobsServiceServicer_to_server,
                               JobsServicer(domain), SERVICE_NAME)

    def restore_then_follow() -> None:
        # Restoring needs the object store, which may still be coming up; readiness covers it.
        domain.load()
        context.bus.subscribe("jobs", domain.apply)

    context.server.on_ready(restore_then_follow)


def main() -> int:
    return run_service("jobs", build)


if __name__ == "__main__":
    sys.exit(main())
