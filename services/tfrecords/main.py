"""Entry point of the tfrecords service (`python -m services.tfrecords.main` or `classforge serve tfrecords`)."""

from __future__ import annotations

import sys

from classforge.v1 import tfrecords_service_pb2, tfrecords_service_pb2_grpc
from services.common.runtime import ServiceContext, run_service
from services.tfrecords.builder import RecordsBuilder
from services.tfrecords.domain import RecordsDomain
from services.tfrecords.servicer import TFRecordsServicer
from services.tfrecords.settings import TFRecordsSettings

SERVICE_NAME = tfrecords_service_pb2.DESCRIPTOR.services_by_name["TFRecordsService"].full_name
CONSUMER_GROUP = "tfrecords"


def build(context: ServiceContext) -> None:
    settings: TFRecordsSettings = context.settings
    builder = RecordsBuilder(workers=settings.workers, scratch_dir=settings.scratch_dir or None,
                             store_factory=context.store_factory)
    domain = RecordsDomain(context.store, context.bus, builder, min_shards=settings.read_parallelism,
                           concurrent_builds=settings.concurrent_builds, heartbeat_seconds=settings.heartbeat_seconds)
    context.server.add_service(tfrecords_service_pb2_grpc.add_TFRecordsServiceServicer_to_server,
                               TFRecordsServicer(domain), SERVICE_NAME)
    context.server.on_ready(
        lambda: context.bus.subscribe(CONSUMER_GROUP, domain.handle_event, kinds=["dataset_prepared"]))
    context.server.on_stop(domain.close)


def main() -> int:
    return run_service("tfrecords", build, TFRecordsSettings)


if __name__ == "__main__":
    sys.exit(main())
