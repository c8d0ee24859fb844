"""Entry point of the trainer service (`python -m services.trainer.main`)."""

from __future__ import annotations

import sys

from classforge.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from services.common.runtime import ServiceContext, run_service
from services.trainer.domain import KINDS, TrainerDomain
from services.trainer.servicer import TrainerServicer
from services.trainer.settings import TrainerSettings

SERVICE_NAME = trainer_service_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name


def build(context: ServiceContext) -> None:
    settings: TrainerSettings = context.settings  # type: ignore[assignment]
    domain = TrainerDomain(context.bus, context.store, work_root=settings.work_dir,
                           progress_seconds=settings.progress_seconds, outage_window_s=settings.outage_window_seconds,
                           heartbeat_seconds=settings.heartbeat_seconds, replica_id=settings.replica_id,
                           lease_seconds=settings.lease_seconds, max_workers=settings.max_workers,
                           worker_restarts=settings.worker_restarts, worker_launch=settings.worker_launch,
                           external_workers_timeout=settings.external_workers_timeout)
    context.server.readiness_checks["training_worker"] = domain.check_worker
    context.server.add_service(trainer_service_pb2_grpc.add_TrainerServiceServicer_to_server,
                               TrainerServicer(domain), SERVICE_NAME)

    def resume_then_follow() -> None:
        # Jobs left queued or running with no live lease (a previous process, a dead replica) continue from
        # their checkpoint; from then on the leases are renewed and swept for replicas that die later.
        domain.resume()
        context.bus.subscribe("trainer", domain.handle, kinds=KINDS)

    context.server.on_ready(resume_then_follow)
    # Runs before bus.close (stop hooks run last-registered first): the final checkpoint is written
    # while the object store and the producer are still open.
    context.server.on_stop(lambda: domain.close(settings.stop_timeout))


def main() -> int:
    return run_service("trainer", build, TrainerSettings)


if __name__ == "__main__":
    sys.exit(main())
