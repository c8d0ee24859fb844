"""gRPC plumbing for the trainer: translates requests to TrainerDomain calls and back. No logic lives
here; errors raised by the domain are mapped by the shared interceptor."""

from __future__ import annotations

from classforge.v1 import trainer_service_pb2 as pb
from classforge.v1 import trainer_service_pb2_grpc as pb_grpc
from services.trainer.domain import TrainerDomain


class TrainerServicer(pb_grpc.TrainerServiceServicer):
    def __init__(self, domain: TrainerDomain):
        self.domain = domain

    def StartTraining(self, request: pb.StartTrainingRequest, context) -> pb.StartTrainingResponse:
        config = request.config if request.HasField("config") else None
        return pb.StartTrainingResponse(training=self.domain.start(request.job_id, request.records_uri, config))

    def GetTraining(self, request: pb.GetTrainingRequest, context) -> pb.GetTrainingResponse:
        return pb.GetTrainingResponse(training=self.domain.get(request.job_id))

    def StopTraining(self, request: pb.StopTrainingRequest, context) -> pb.StopTrainingResponse:
        return pb.StopTrainingResponse(training=self.domain.stop(request.job_id))
