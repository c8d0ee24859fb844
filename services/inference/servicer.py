"""gRPC plumbing for the inference service: translates requests to InferenceDomain calls.
No logic lives here; errors raised by the domain are mapped by the shared interceptor."""

from __future__ import annotations

from classforge.v1 import inference_service_pb2 as pb
from classforge.v1 import inference_service_pb2_grpc as pb_grpc
from services.inference.domain import InferenceDomain


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    def __init__(self, domain: InferenceDomain):
        self.domain = domain

    def Classify(self, request: pb.ClassifyRequest, context) -> pb.ClassifyResponse:
        return self.domain.classify(request, context.time_remaining())

    def ClassifyStream(self, request_iterator, context):
        requests = (item.request for item in request_iterator)
        for response in self.domain.classify_stream(requests, context.time_remaining):
            yield pb.ClassifyStreamResponse(response=response)

    def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=self.domain.list_models(request.model_name))

    def Rollback(self, request: pb.RollbackRequest, context) -> pb.RollbackResponse:
        model = self.domain.rollback(request.model_name, request.version, context.time_remaining())
        return pb.RollbackResponse(model=model)
