"""gRPC plumbing of the model server stand-in: TF Serving's PredictionService and ModelService."""

from __future__ import annotations

import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.apis.status_pb2 import StatusProto

from services.model_server.core import DEFAULT_SIGNATURE, ModelServerCore, ServingError

_OK = 0


def _spec_choice(model_spec) -> tuple[int | None, str]:
    which = model_spec.WhichOneof("version_choice")
    if which == "version":
        return model_spec.version.value, ""
    if which == "version_label":
        return None, model_spec.version_label
    return None, ""


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ModelServerCore):
        self.core = core

    def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        spec = request.model_spec
        version, label = _spec_choice(spec)
        number, loaded = self.core.resolve(spec.name, version, label)
        try:
            inputs = {key: tf.make_ndarray(tensor) for key, tensor in request.inputs.items()}
        except (TypeError, ValueError) as exc:
            raise ServingError(tf.errors.INVALID_ARGUMENT, f"bad input tensor: {exc}") from None
        outputs = loaded.predict(spec.signature_name, inputs, list(request.output_filter))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = number
        response.model_spec.signature_name = spec.signature_name or DEFAULT_SIGNATURE
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                         context) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.metadata_field:
            raise ServingError(tf.errors.INVALID_ARGUMENT,
                               "GetModelMetadataRequest must specify at least one metadata_field")
        unsupported = [f for f in request.metadata_field if f != "signature_def"]
        if unsupported:
            raise ServingError(tf.errors.INVALID_ARGUMENT, f"Metadata field {unsupported[0]} is not supported")
        version, label = _spec_choice(request.model_spec)
        number, loaded = self.core.resolve(request.model_spec.name, version, label)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = number
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for key, value in loaded.signature_defs.items():
            signatures.signature_def[key].CopyFrom(value)
        response.metadata["signature_def"].Pack(signatures)
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: ModelServerCore):
        self.core = core

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,
                       context) -> get_model_status_pb2.GetModelStatusResponse:
        version, label = _spec_choice(request.model_spec)
        if label:
            version, _ = self.core.resolve(request.model_spec.name, None, label)
        response = get_model_status_pb2.GetModelStatusResponse()
        for entry in self.core.status(request.model_spec.name, version):
            status = response.model_version_status.add(version=entry.version, state=entry.state)
            status.status.CopyFrom(StatusProto(error_code=2 if entry.error else _OK, error_message=entry.error))
        return response

    def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest,
                                  context) -> model_management_pb2.ReloadConfigResponse:
        # Like TF Serving: the outcome is both the call's status and response.status.
        self.core.reload_config(request.config)
        return model_management_pb2.ReloadConfigResponse(status=StatusProto(error_code=_OK))
