"""The inference service's only way to the model server: TF Serving's PredictionService and
ModelService stubs (tensorflow-serving-api). The model is never loaded in this process.

gRPC stays in here: an error status of the model server comes out as ModelServerError, a domain error,
which the domain turns into what its caller should see (it knows the request, the client does not)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
import numpy as np

from services.common import serving_signature as contract
from services.common.auth import with_token
from services.common.channels import open_channel
from services.common.errors import ClassforgeError, FailedPrecondition, Unavailable
from services.common.tls import TlsConfig
from services.inference import tfs_api as tfs

T = TypeVar("T")


class ModelServerError(ClassforgeError):
    """The model server answered a call with an error status, or could not be reached. `status` names
    its code (INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE …), `details` is its message; `code` is that
    status, for the interceptor should one go unmapped."""

    def __init__(self, target: str, code: grpc.StatusCode, details: str):
        super().__init__(f"model server {target}: {code.name}: {details}")
        self.code, self.status, self.details = code, code.name, details


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: int  # tfs.State
    error: str = ""
    error_code: int = 0  # TensorFlow's error code (the same numbers as gRPC status codes); 0 is OK


@dataclass(frozen=True)
class TensorInfo:
    dtype: int  # tfs.types_pb2.DataType
    shape: tuple[int, ...] | None  # -1 for a dimension of unknown size; None for an unknown rank


@dataclass(frozen=True)
class SignatureInfo:
    """The serving signature of one loaded version, as the model server describes it."""

    version: int
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]


class ModelServerClient:
    def __init__(self, target: str, max_message_bytes: int = 64 * 1024 * 1024, *, tls: TlsConfig | None = None,
                 plaintext: bool = False, token: str | None = None):
        """TLS with `tls` (the CA the model server's certificate is verified with, and this service's own
        certificate for mutual TLS); plaintext only when `plaintext` says so. A client certificate rotated
        on disk is used from the next start: the channel reads the files once. `token`: the bearer token
        presented to the model server, when it knows this service by token rather than by certificate
        (publishing reloads its config: admin)."""
        self.target = target
        self.channel = open_channel(target, tls, plaintext=plaintext, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ])
        calls = with_token(self.channel, token)
        self._predict = tfs.prediction_service_pb2_grpc.PredictionServiceStub(calls)
        self._models = tfs.model_service_pb2_grpc.ModelServiceStub(calls)

    def close(self) -> None:
        self.channel.close()

    def _call(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except grpc.RpcError as exc:
            raise ModelServerError(self.target, exc.code(), exc.details() or "") from None

    def predict(self, name: str, images: list[bytes], *, version: int | None = None, label: str = "",
                timeout: float | None = None, input_key: str = contract.INPUT_KEY
                ) -> tuple[int, dict[str, np.ndarray]]:
        """Runs serving_default on a batch; returns the version that answered and the outputs.
        Raises ModelServerError as the model server answered (the caller maps it)."""
        request = tfs.predict_pb2.PredictRequest()
        request.model_spec.name = name
        request.model_spec.signature_name = contract.SIGNATURE_NAME
        if version:
            request.model_spec.version.value = version
        elif label:
            request.model_spec.version_label = label
        request.inputs[input_key].CopyFrom(tfs.string_tensor(images))
        response = self._call(lambda: self._predict.Predict(request, timeout=timeout))
        # Only the contract's outputs: a model may add others (the trainer adds labels_<task> strings).
        outputs = {key: tfs.to_numpy(tensor) for key, tensor in response.outputs.items()
                   if key.startswith((contract.PROBABILITIES_PREFIX, contract.CLASS_IDS_PREFIX))}
        return response.model_spec.version.value, outputs

    def status(self, name: str, version: int | None = None, timeout: float = 5.0, label: str = ""
               ) -> list[VersionStatus]:
        """Every version the model server knows for `name` (or the one `version` or `label` names); [] when it
        knows none (NOT_FOUND)."""
        request = tfs.get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        if version:
            request.model_spec.version.value = version
        elif label:
            request.model_spec.version_label = label
        try:
            response = self._call(lambda: self._models.GetModelStatus(request, timeout=timeout))
        except ModelServerError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                return []
            raise
        return [VersionStatus(s.version, s.state, s.status.error_message if s.status.error_code else "",
                              s.status.error_code) for s in response.model_version_status]

    def metadata(self, name: str, *, version: int | None = None, label: str = "", timeout: float | None = None,
                 signature: str = contract.SIGNATURE_NAME) -> SignatureInfo:
        """The serving signature of a loaded version (PredictionService.GetModelMetadata). Raises
        ModelServerError as the model server answered (the caller maps it)."""
        request = tfs.get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = name
        if version:
            request.model_spec.version.value = version
        elif label:
            request.model_spec.version_label = label
        response = self._call(lambda: self._predict.GetModelMetadata(request, timeout=timeout))
        signatures = tfs.get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        found = signatures.signature_def.get(signature)
        if found is None:
            raise FailedPrecondition(f"model {name!r} version {response.model_spec.version.value} has no "
                                     f"{signature!r} signature (it has {', '.join(sorted(signatures.signature_def))})")

        def tensors(infos) -> dict[str, TensorInfo]:
            return {key: TensorInfo(info.dtype, None if info.tensor_shape.unknown_rank else
                                    tuple(d.size for d in info.tensor_shape.dim)) for key, info in infos.items()}

        return SignatureInfo(response.model_spec.version.value, tensors(found.inputs), tensors(found.outputs))

    def reload_config(self, config, timeout: float = 60.0) -> None:
        request = tfs.model_management_pb2.ReloadConfigRequest(config=config)
        response = self._call(lambda: self._models.HandleReloadConfigRequest(request, timeout=timeout))
        if response.status.error_code:
            raise FailedPrecondition(f"model server {self.target} refused the model config: "
                                     f"{response.status.error_message}")

    def ping(self) -> None:
        """Readiness: the model server answers ModelService (NOT_FOUND for a made-up model is an answer)."""
        try:
            self.status("classforge-readiness-probe", timeout=2.0)
        except ModelServerError as exc:
            raise Unavailable(exc.message) from None
