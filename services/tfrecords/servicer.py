"""gRPC plumbing for the tfrecords service: translates requests to RecordsDomain calls and back.
No logic lives here; errors raised by the domain are mapped by the shared interceptor.

BuildRecords starts a build and returns at once (status RUNNING, or SUCCEEDED when the records
already exist); poll GetBuild with the returned build_id until SUCCEEDED or FAILED."""

from __future__ import annotations

from classforge.v1 import tfrecords_service_pb2 as pb
from classforge.v1 import tfrecords_service_pb2_grpc as pb_grpc
from services.tfrecords.domain import RecordsDomain


class TFRecordsServicer(pb_grpc.TFRecordsServiceServicer):
    def __init__(self, domain: RecordsDomain):
        self.domain = domain

    def BuildRecords(self, request: pb.BuildRecordsRequest, context) -> pb.BuildRecordsResponse:
        options = request.options if request.HasField("options") else None
        return pb.BuildRecordsResponse(build=self.domain.start_build(request.dataset_id, options))

    def GetBuild(self, request: pb.GetBuildRequest, context) -> pb.GetBuildResponse:
        return pb.GetBuildResponse(build=self.domain.get_build(request.build_id))
