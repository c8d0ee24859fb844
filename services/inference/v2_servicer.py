"""gRPC plumbing of the Open Inference Protocol v2 (inference.GRPCInferenceService, KServe's
grpc_predict_v2.proto) on the inference service's gRPC server, beside classforge.v1.InferenceService.
It translates requests to the same InferenceDomain calls as Classify; errors raised by the domain (and by the
translation) are mapped by the shared interceptor.

BYTES input: `raw_input_contents` (Triton's form, what tritonclient sends: each element a 4-byte
little-endian length, then the bytes) or `contents.bytes_contents` (one element per image). Outputs always
come back in `raw_output_contents` (row-major, little-endian), as Triton answers.
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf import json_format

from classforge.third_party.kserve import grpc_predict_v2_pb2 as pb
from classforge.third_party.kserve import grpc_predict_v2_pb2_grpc as pb_grpc
from services.common.errors import ClassforgeError, InvalidArgument, shown
from services.inference import metrics, v2
from services.inference.classifier import V2_GRPC
from services.inference.domain import InferenceDomain
from services.inference.repository import check_model_name

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
_OUTPUT_PARAMETERS = {"binary_data"}  # a REST notion tritonclient may send; every gRPC output is raw anyway


class OpenInferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, domain: InferenceDomain, ready: Callable[[], bool]):
        self.domain = domain
        self.ready = ready

    def ServerLive(self, request: pb.ServerLiveRequest, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: pb.ServerReadyRequest, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready())

    def ServerMetadata(self, request: pb.ServerMetadataRequest, context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=v2.SERVER_NAME, version=v2.server_version(), extensions=v2.EXTENSIONS)

    def ModelReady(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        check_model_name(request.name, "name")
        return pb.ModelReadyResponse(ready=self.domain.model_ready(
            request.name, v2.parse_version(request.version, "version")))

    def ModelMetadata(self, request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
        check_model_name(request.name, "name")
        meta = self.domain.model_metadata(request.name, v2.parse_version(request.version, "version"))
        return json_format.ParseDict(v2.metadata(meta), pb.ModelMetadataResponse())

    def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        try:
            check_model_name(request.model_name)
            version = v2.parse_version(request.model_version)
            images = _images(request)
            outputs = _outputs(request)
        except ClassforgeError as exc:
            metrics.count_rejected(request.model_name, exc.code.name, V2_GRPC)
            raise
        prediction = self.domain.infer(request.model_name, images, version=version, outputs=outputs,
                                           time_remaining=context.time_remaining(), protocol=V2_GRPC)
        response = pb.ModelInferResponse(model_name=prediction.model, model_version=str(prediction.version),
                                         id=request.id)
        for name, array in prediction.outputs.items():
            response.outputs.add(name=name, datatype=v2.datatype(array), shape=list(array.shape))
            response.raw_output_contents.append(v2.raw(array))
        return response


def _images(request: pb.ModelInferRequest) -> list[bytes]:
    if len(request.inputs) != 1:
        raise InvalidArgument("inputs", f"the model takes one input, 'image_bytes' (BYTES, shape [-1]); the request "
                                        f"has {len(request.inputs)}")
    tensor = request.inputs[0]
    v2.check_input(tensor.name, tensor.datatype, list(tensor.shape), "inputs[0]")
    typed = [field.name for field, _ in tensor.contents.ListFields()]
    if request.raw_input_contents:
        if typed:
            raise InvalidArgument("inputs[0].contents", "is set together with raw_input_contents; send the images in "
                                                        "one of them")
        if len(request.raw_input_contents) != 1:
            raise InvalidArgument("raw_input_contents", f"holds {len(request.raw_input_contents)} entries for 1 input")
        images = v2.deserialize_bytes(request.raw_input_contents[0], "raw_input_contents[0]")
    elif typed:
        if typed != ["bytes_contents"]:
            raise InvalidArgument("inputs[0].contents", f"must hold bytes_contents (BYTES), got {', '.join(typed)}")
        images = list(tensor.contents.bytes_contents)
    else:
        raise InvalidArgument("inputs[0].contents", "is empty: send the encoded images as contents.bytes_contents "
                                                    "or raw_input_contents")
    v2.check_count(list(tensor.shape), len(images), "inputs[0]")
    return images


def _outputs(request: pb.ModelInferRequest) -> list[str] | None:
    for index, output in enumerate(request.outputs):
        unknown = sorted(set(output.parameters) - _OUTPUT_PARAMETERS)
        if unknown:
            raise InvalidArgument(f"outputs[{index}].parameters",
                                  f"{shown(unknown[0])} is not supported (the outputs are the model's tensors as "
                                  f"they are)")
    return [output.name for output in request.outputs] or None
