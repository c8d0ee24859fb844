"""gRPC plumbing for the ingest service: translates requests to IngestDomain calls and back.
No logic lives here; errors raised by the domain are mapped by the shared interceptor."""

from __future__ import annotations

from collections.abc import Iterator

from classforge.v1 import ingest_service_pb2 as pb
from classforge.v1 import ingest_service_pb2_grpc as pb_grpc
from services.common.errors import InvalidArgument
from services.ingest.domain import IngestDomain


class IngestServicer(pb_grpc.IngestServiceServicer):
    def __init__(self, domain: IngestDomain):
        self.domain = domain

    def CreateDataset(self, request_iterator: Iterator[pb.CreateDatasetRequest], context) -> pb.CreateDatasetResponse:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument("header", "the first message must carry the header (options, then archive_format "
                                            "or source); archive chunks follow it")
        return pb.CreateDatasetResponse(dataset=self.domain.create(first.header, _chunks(request_iterator)))

    def GetDataset(self, request: pb.GetDatasetRequest, context) -> pb.GetDatasetResponse:
        return pb.GetDatasetResponse(dataset=self.domain.get(request.dataset_id))

    def ListDatasets(self, request: pb.ListDatasetsRequest, context) -> pb.ListDatasetsResponse:
        datasets, token = self.domain.list(request.page_size, request.page_token)
        return pb.ListDatasetsResponse(datasets=datasets, next_page_token=token)

    def GetDatasetReport(self, request: pb.GetDatasetReportRequest, context) -> pb.GetDatasetReportResponse:
        report, markdown = self.domain.report(request.dataset_id)
        return pb.GetDatasetReportResponse(report=report, markdown=markdown)

    def RelabelDataset(self, request: pb.RelabelDatasetRequest, context) -> pb.RelabelDatasetResponse:
        dataset, manifest = self.domain.relabel(request.dataset_id, request.corrections, request.new_dataset_id)
        corrections = manifest["corrections"]
        return pb.RelabelDatasetResponse(dataset=dataset, parent_dataset_id=manifest["parent"]["dataset_id"],
                                         relabeled_count=corrections["relabeled"],
                                         dropped_count=corrections["dropped"], kept_count=corrections["kept"])


def _chunks(requests: Iterator[pb.CreateDatasetRequest]) -> Iterator[bytes]:
    for number, request in enumerate(requests, 1):
        if request.WhichOneof("part") != "chunk":
            raise InvalidArgument(f"requests[{number}]", "only the first message carries a header; the rest carry "
                                                         "archive chunks")
        yield request.chunk
