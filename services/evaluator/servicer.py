"""gRPC plumbing for the evaluator: translates requests to EvaluatorDomain calls and back. No logic
lives here; errors raised by the domain are mapped by the shared interceptor."""

from __future__ import annotations

from classforge.v1 import evaluator_service_pb2 as pb
from classforge.v1 import evaluator_service_pb2_grpc as pb_grpc
from services.evaluator.domain import EvaluatorDomain, comparison_to_proto


class EvaluatorServicer(pb_grpc.EvaluatorServiceServicer):
    def __init__(self, domain: EvaluatorDomain):
        self.domain = domain

    def Evaluate(self, request: pb.EvaluateRequest, context) -> pb.EvaluateResponse:
        return pb.EvaluateResponse(report=self.domain.evaluate(request))

    def GetReport(self, request: pb.GetReportRequest, context) -> pb.GetReportResponse:
        return pb.GetReportResponse(report=self.domain.get_report(request.job_id))

    def CompareEvaluations(self, request: pb.CompareEvaluationsRequest, context) -> pb.CompareEvaluationsResponse:
        return comparison_to_proto(self.domain.compare(request.job_a, request.job_b))
