"""Entry point of the jobs service (`python -m services.jobs.main` or `classforge serve jobs`)."""

from __future__ import annotations

import sys
import threading

from classforge.v1 import jobs_service_pb2, jobs_service_pb2_grpc
from services.common.runtime import ServiceContext, run_service
from services.jobs.domain import JobsDomain
from services.jobs.servicer import JobsServicer
from services.jobs.settings import JobsSettings

SERVICE_NAME = jobs_service_pb2.DESCRIPTOR.services_by_name["JobsService"].full_name
GROUP, DEAD_LETTER_GROUP = "jobs", "jobs-dead-letters"


def build(context: ServiceContext) -> None:
    settings: JobsSettings = context.settings  # type: ignore[assignment]
    domain = JobsDomain(context.bus, context.store, stage_deadline_s=settings.stage_deadline_seconds,
                        cancel_grace_s=settings.cancel_grace_seconds, max_workers=settings.trainer_max_workers)
    context.server.add_service(jobs_service_pb2_grpc.add_JobsServiceServicer_to_server,
                               JobsServicer(domain), SERVICE_NAME)
    stopping = threading.Event()

    def watchdog() -> None:
        while not stopping.wait(settings.watchdog_seconds):
            domain.watchdog_round()

    def restore_then_follow() -> None:
        # Restoring needs the object store, which may still be coming up; readiness covers it.
        domain.load()
        # The fold never gives up on an event: an outage is waited out, however long.
        context.bus.subscribe(GROUP, domain.apply, outage_window_s=float("inf"))
        context.bus.subscribe_dead_letters(DEAD_LETTER_GROUP, domain.apply_dead_letter)
        threading.Thread(target=watchdog, name="jobs-watchdog", daemon=True).start()

    context.server.on_ready(restore_then_follow)
    context.server.on_stop(stopping.set)


def main() -> int:
    return run_service("jobs", build, JobsSettings)


if __name__ == "__main__":
    sys.exit(main())
