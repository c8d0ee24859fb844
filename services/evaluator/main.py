"""Entry point of the evaluator service (`python -m services.evaluator.main` or `classforge serve evaluator`)."""

from __future__ import annotations

import sys

from classforge.v1 import evaluator_service_pb2, evaluator_service_pb2_grpc
from services.common.runtime import ServiceContext, run_service
from services.evaluator.domain import EvaluatorDomain, Limits
from services.evaluator.servicer import EvaluatorServicer
from services.evaluator.settings import EvaluatorSettings

SERVICE_NAME = evaluator_service_pb2.DESCRIPTOR.services_by_name["EvaluatorService"].full_name
GROUP = "evaluator"
KINDS = ["job_submitted", "training_completed"]


def build(context: ServiceContext) -> None:
    settings: EvaluatorSettings = context.settings  # type: ignore[assignment]
    domain = EvaluatorDomain(context.bus, context.store, settings.work_dir, settings.options(),
                             Limits(settings.default_max_regression, settings.default_max_class_regression),
                             heartbeat_seconds=settings.heartbeat_seconds)
    context.server.add_service(evaluator_service_pb2_grpc.add_EvaluatorServiceServicer_to_server,
                               EvaluatorServicer(domain), SERVICE_NAME)
    context.server.on_ready(lambda: context.bus.subscribe(GROUP, domain.handle, kinds=KINDS))


def main() -> int:
    return run_service("evaluator", build, EvaluatorSettings)


if __name__ == "__main__":
    sys.exit(main())
