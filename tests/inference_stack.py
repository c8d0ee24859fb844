"""The inference service in one process, for its gRPC, REST and Open Inference Protocol v2 tests: toy
SavedModels exported from tests/support/toy_model.py, the model-server stand-in (ModelServerCore +
TF Serving's PredictionService/ModelService servicers) over real gRPC, a Publisher that publishes versions,
the Classifier, the InferenceDomain over both, and the inference service's gRPC server with both
classforge.v1.InferenceService and inference.GRPCInferenceService, plus its HTTP server (uvicorn) on a free
port."""

from __future__ import annotations

import json
import struct
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import grpc

from classforge.third_party.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from classforge.v1 import common_pb2, events_pb2
from classforge.v1 import inference_service_pb2 as pb
from classforge.v1 import inference_service_pb2_grpc as pb_grpc
from services.common.events import InProcessEventBus, new_event
from services.common.grpc_server import GrpcServer
from services.common.http_server import HttpServer
from services.common.storage import LocalObjectStore
from services.inference import v2_servicer
from services.inference.classifier import Classifier
from services.inference.domain import InferenceDomain
from services.inference.http_api import build_app
from services.inference.main import GROUP, KINDS, SERVICE_NAME
from services.inference.model_server_client import ModelServerClient
from services.inference.publisher import Publisher
from services.inference.repository import ModelRepository
from services.inference.servicer import InferenceServicer
from services.model_server.core import ModelServerCore
from services.model_server.main import MODEL_SERVICE, PREDICTION_SERVICE
from services.model_server.servicer import ModelServicer, PredictionServicer
from tests.support import toy_model

IMAGES = [toy_model.png(12, 9, seed=s) for s in range(4)] + [toy_model.jpeg(20, 16, seed=9)]


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk declaring width x height, and nothing else."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))


# Bad images every protocol must refuse with INVALID_ARGUMENT.
NOT_AN_IMAGE = b"this is not an image at all"
UNDECODABLE = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40  # passes the signature check, fails the model's decode
TRUNCATED = toy_model.jpeg(16, 16, 1)[:60]
BOMB = png_header(50_000, 50_000)  # 40 bytes declaring 2.5 gigapixels


def build_exports(root: Path, seeds=(1, 2)) -> dict[int, Path]:
    return {seed: toy_model.build(root / f"seed{seed}", seed) for seed in seeds}


class Stack:
    def __init__(self, root: Path, exports: dict[int, Path], *, keep_versions: int = 3,
                 max_body_bytes: int = 64 * 1024 * 1024, **classifier_options):
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.base = root / "models"
        self.base.mkdir()
        self.exports = exports
        self.store = LocalObjectStore(root / "store")
        for seed, export in exports.items():
            for path in sorted(export.rglob("*")):
                if path.is_file():
                    self.store.put_file(f"models/job-{seed}/saved_model/{path.relative_to(export)}", path)
        self.core = ModelServerCore(self.base, poll_seconds=0.05)
        self.model_server = GrpcServer("model-server-test", port=0, host="127.0.0.1", grace_seconds=1, plaintext=True)
        self.model_server.add_service(prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server,
                                      PredictionServicer(self.core), PREDICTION_SERVICE)
        self.model_server.add_service(model_service_pb2_grpc.add_ModelServiceServicer_to_server,
                                      ModelServicer(self.core), MODEL_SERVICE)
        self.model_server.start()
        self.core.start()
        self.bus = InProcessEventBus()
        self.client = ModelServerClient(f"127.0.0.1:{self.model_server.port}", plaintext=True)
        self.repo = ModelRepository(self.base)
        self.copied: list[str] = []  # every file the publisher copied, in order
        self.publisher = Publisher(self.store, self.bus, self.repo, self.client, server_base_path=str(self.base),
                                   keep_versions=keep_versions, publish_timeout=30, on_file=self.copied.append,
                                   poll_interval=0.02)
        self.classifier = Classifier(self.client, self.repo, on_label_missing=self.publisher.request_reconcile,
                                     **classifier_options)
        self.domain = InferenceDomain(self.classifier, self.publisher)
        self.server = GrpcServer("inference-test", port=0, host="127.0.0.1", grace_seconds=1, plaintext=True)
        self.server.add_service(pb_grpc.add_InferenceServiceServicer_to_server,
                                InferenceServicer(self.domain), SERVICE_NAME)
        self.server.add_service(v2_grpc.add_GRPCInferenceServiceServicer_to_server,
                                v2_servicer.OpenInferenceServicer(self.domain, lambda: self.server.serving),
                                v2_servicer.SERVICE_NAME)
        self.server.start()
        self.http = HttpServer("inference-test", build_app(self.domain, ready=lambda: self.server.serving,
                                                           max_body_bytes=max_body_bytes),
                               port=0, host="127.0.0.1", grace_seconds=1)
        self.http.start()
        self.address = f"127.0.0.1:{self.server.port}"
        self.url = f"http://127.0.0.1:{self.http.port}"
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pb_grpc.InferenceServiceStub(self.channel)
        self.v2 = v2_grpc.GRPCInferenceServiceStub(self.channel)
        self.out: list[events_pb2.Event] = []  # what the publisher announced
        self.bus.subscribe(GROUP, self.publisher.handle, kinds=KINDS)
        self.bus.subscribe("test-observer", self.out.append, kinds=["model_deployed", "stage_failed"])

    def submit(self, job_id: str, seed: int, *, blessed: bool = True, deploy: bool = True,
               model: str = "toy") -> events_pb2.Event:
        """The job's spec, then its evaluation of export `seed`, as the pipeline would send them."""
        spec = common_pb2.JobSpec(deploy=common_pb2.DeployOptions(deploy=deploy, model_name=model))
        self.bus.publish(new_event(job_id, "jobs", job_submitted=events_pb2.JobSubmitted(spec=spec)))
        evaluation = self.evaluation(job_id, seed, blessed)
        self.bus.publish(evaluation)
        self.bus.drain(timeout=60)
        return evaluation

    def evaluation(self, job_id: str, seed: int, blessed: bool = True) -> events_pb2.Event:
        uri = self.store.uri(f"models/job-{seed}/saved_model") + "/"
        return new_event(job_id, "evaluator", evaluation_completed=events_pb2.EvaluationCompleted(
            model=common_pb2.ModelRef(job_id=job_id, uri=uri), blessed=blessed, accuracy=0.9))

    def publish(self, job_id: str, seed: int, model: str = "toy") -> None:
        self.submit(job_id, seed, model=model)

    def classify(self, image: bytes, **kwargs) -> pb.ClassifyResponse:
        return self.stub.Classify(pb.ClassifyRequest(image=image, **kwargs), timeout=10)

    def request(self, method: str, path: str, body: bytes | dict | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """A plain urllib request; returns (status, headers, body) whatever the status."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, dict(reply.headers), reply.read()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, dict(error.headers), error.read()

    def json(self, method: str, path: str, body: bytes | dict | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict]:
        status, _, data = self.request(method, path, body, headers)
        return status, json.loads(data)

    def close(self):
        self.channel.close()
        self.http.stop()
        self.server.stop()
        self.domain.close()
        self.model_server.stop()
        self.core.stop()
        self.bus.close()
