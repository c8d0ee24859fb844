"""The inference service's logic, in one class every protocol layer calls: the gRPC servicers (classforge.v1
and Open Inference Protocol v2) and the REST app. No gRPC server, no HTTP and no Kafka here.

The work is split over the modules beside this one: the Classifier answers requests (classifier.py), the
Publisher publishes blessed versions, rolls back and lists them (publisher.py), both reach the model server
through the ModelServerClient (model_server_client.py, which turns its gRPC errors into domain errors) and
read the model base path through the ModelRepository (repository.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from classforge.v1 import events_pb2
from classforge.v1 import inference_service_pb2 as pb
from services.inference.classifier import GRPC, REST, V2_REST, Classifier, ModelMetadata, Prediction
from services.inference.model_server_client import ModelServerClient, VersionStatus
from services.inference.publisher import Publisher
from services.inference.repository import ModelRepository


class InferenceDomain:
    def __init__(self, classifier: Classifier, publisher: Publisher):
        self.classifier, self.publisher = classifier, publisher

    @property
    def client(self) -> ModelServerClient:
        return self.classifier.client

    @property
    def repo(self) -> ModelRepository:
        return self.classifier.repo

    # ------------------------------------------------------------------ lifecycle

    def check_model_server(self) -> None:
        """Readiness: the model server answers."""
        self.client.ping()

    def check_model_base_path(self) -> None:
        """Readiness: the model base path is usable."""
        self.repo.check()

    def start(self, reconcile_seconds: float = 0) -> None:
        """The model server serves the chosen versions before the service says SERVING; then the config is
        re-sent every `reconcile_seconds` (0: never)."""
        self.publisher.reconcile()
        self.publisher.start_reconciler(reconcile_seconds)

    def handle(self, event: events_pb2.Event) -> None:
        self.publisher.handle(event)

    def close(self) -> None:
        # The reconciler first, then the request threads, then the channel both use.
        self.publisher.stop()
        self.classifier.close()
        self.client.close()

    # ------------------------------------------------------------------ requests

    def classify(self, request: pb.ClassifyRequest, time_remaining: float | None = None,
                 protocol: str = GRPC) -> pb.ClassifyResponse:
        return self.classifier.classify(request, time_remaining, protocol)

    def classify_stream(self, requests: Iterable[pb.ClassifyRequest],
                        time_remaining: Callable[[], float | None]) -> Iterator[pb.ClassifyResponse]:
        return self.classifier.classify_stream(requests, time_remaining)

    def classify_batch(self, model: str, images: list[bytes], *, version: int = 0, label: str = "", top_k: int = 0,
                       time_remaining: float | None = None, protocol: str = REST) -> list[pb.ClassifyResponse]:
        return self.classifier.classify_batch(model, images, version=version, label=label, top_k=top_k,
                                              time_remaining=time_remaining, protocol=protocol)

    def infer(self, model: str, images: list[bytes], *, version: int = 0, outputs: list[str] | None = None,
              time_remaining: float | None = None, protocol: str = V2_REST) -> Prediction:
        return self.classifier.infer(model, images, version=version, outputs=outputs,
                                     time_remaining=time_remaining, protocol=protocol)

    # ------------------------------------------------------------------ models

    def model_status(self, model: str, version: int = 0, label: str = "") -> list[VersionStatus]:
        return self.classifier.model_status(model, version, label)

    def model_ready(self, model: str, version: int = 0) -> bool:
        return self.classifier.model_ready(model, version)

    def model_metadata(self, model: str, version: int = 0) -> ModelMetadata:
        return self.classifier.model_metadata(model, version)

    def list_models(self, name: str = "") -> list[pb.ServedModel]:
        return self.publisher.list_models(name)

    def rollback(self, name: str, version: int, timeout: float | None = None) -> pb.ServedModel:
        return self.publisher.rollback(name, version, timeout)
