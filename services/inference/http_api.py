"""REST on the inference service: TF Serving-style /v1 and the Open Inference Protocol v2 /v2, an ASGI app
(starlette) over the same InferenceDomain as gRPC. Nothing here decides anything about models or images:
requests are decoded, the domain answers, errors become `{"error": <the gRPC message>, "code": <gRPC code>}` with
the status of services.common.http_server.HTTP_STATUS (400 bad request, 404 unknown model or version, 413
too large, 503 not ready / not loaded / model server down, 504 deadline).

Who may call: with an authenticator (services/common/auth.py), every route needs `Authorization: Bearer <token>`
and the role the gRPC method it mirrors needs (MIRRORED_METHOD below; the one policy table is auth.POLICY): 401
with `WWW-Authenticate: Bearer` without valid credentials, 403 for too low a role. /v2/health/live and
/v2/health/ready stay open, like grpc.health.v1.

TF Serving-style (/v1):
  POST /v1/models/{name}[/versions/{v} | /labels/{label}]:classify
       {"instances": [{"b64": "<base64 image>"}, …], "top_k": 3}
       The images may also come as TF Serving's row form with the input named ({"image_bytes": {"b64": …}}), as
       its columnar form ({"inputs": {"image_bytes": [{"b64": …}, …]}} or {"inputs": [{"b64": …}, …]}) or as
       classify's "examples" ([{"image_bytes": {"b64": …}}, …]); "signature_name" may be given and must be
       serving_default. Base64 is standard or URL-safe, padding optional. A plain string is refused (TF
       Serving reads it as text, not as bytes).
       -> {"results": [<Classify's ClassifyResponse as proto3 JSON>, … one per image, in order]}
  GET  /v1/models/{name}[/versions/{v} | /labels/{label}]
       -> {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}

Open Inference Protocol v2 (/v2; services/inference/v2.py describes the model's tensors):
  GET  /v2, /v2/health/live, /v2/health/ready (503 until the service is ready)
  GET  /v2/models/{name}[/versions/{v}]          metadata
  GET  /v2/models/{name}[/versions/{v}]/ready    200 ready, 503 not ready (published but not loaded), 404 unknown
  POST /v2/models/{name}[/versions/{v}]/infer
       JSON: the BYTES elements of image_bytes are base64 strings (JSON carries no raw bytes; the same
       convention as KServe's binary inputs over JSON). Binary data extension (Triton, what tritonclient.http
       sends): header Inference-Header-Content-Length: <bytes of JSON>; the input has
       "parameters": {"binary_data_size": n} and its elements follow the JSON as 4-byte little-endian length +
       bytes. Outputs come back as JSON data, or as binary data when the request asks for it
       ("parameters": {"binary_data_output": true}, or an output's {"binary_data": true}). The request
       parameter "timeout" (microseconds, as tritonclient sends it) bounds the call; other request
       parameters are ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.common import serving_signature as contract
from services.common.auth import Authenticator
from services.common.errors import ClassforgeError, InvalidArgument, ResourceExhausted, RetryLater, shown
from services.common.http_server import error_body, error_response
from services.inference import metrics, tfs_api, v2
from services.inference.classifier import REST, V2_REST
from services.inference.domain import InferenceDomain

_STATE_NAMES = {value: name for name, value in tfs_api.State.items()}
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_V1_KEYS = ("instances", "inputs", "examples")
_V1_ACCEPTED = {*_V1_KEYS, "signature_name", "top_k"}
_V2_ACCEPTED = {"id", "parameters", "inputs", "outputs"}
_HEADER_LENGTH = "inference-header-content-length"


# The gRPC method each REST operation mirrors: its error wording (the operation's name) and its minimum role
# (services.common.auth.required_role of the full method) come from there.
MIRRORED_METHOD = {
    "Classify": "/classforge.v1.InferenceService/Classify",
    "ModelStatus": "/tensorflow.serving.ModelService/GetModelStatus",
    "ServerMetadata": "/inference.GRPCInferenceService/ServerMetadata",
    "ServerLive": "/inference.GRPCInferenceService/ServerLive",
    "ServerReady": "/inference.GRPCInferenceService/ServerReady",
    "ModelReady": "/inference.GRPCInferenceService/ModelReady",
    "ModelMetadata": "/inference.GRPCInferenceService/ModelMetadata",
    "ModelInfer": "/inference.GRPCInferenceService/ModelInfer",
}


def build_app(domain: InferenceDomain, *, ready: Callable[[], bool], max_body_bytes: int,
              authenticator: Authenticator | None = None) -> Starlette:
    """`ready`: whether the service is ready (what its gRPC health says); `max_body_bytes`: larger bodies are 413;
    `authenticator`: who may call (None: anyone, as with auth disabled)."""
    api = _Api(domain, ready, max_body_bytes, authenticator)
    routes = [
        # TF Serving-style
        Route("/v1/models/{name}:classify", api.v1_classify, methods=["POST"]),
        Route("/v1/models/{name}/versions/{version}:classify", api.v1_classify, methods=["POST"]),
        Route("/v1/models/{name}/labels/{label}:classify", api.v1_classify, methods=["POST"]),
        Route("/v1/models/{name}", api.v1_status, methods=["GET"]),
        Route("/v1/models/{name}/versions/{version}", api.v1_status, methods=["GET"]),
        Route("/v1/models/{name}/labels/{label}", api.v1_status, methods=["GET"]),
        # Open Inference Protocol v2
        Route("/v2", api.v2_server_metadata, methods=["GET"]),
        Route("/v2/health/live", api.v2_live, methods=["GET"]),
        Route("/v2/health/ready", api.v2_ready, methods=["GET"]),
        Route("/v2/models/{name}/ready", api.v2_model_ready, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/ready", api.v2_model_ready, methods=["GET"]),
        Route("/v2/models/{name}/infer", api.v2_infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", api.v2_infer, methods=["POST"]),
        Route("/v2/models/{name}", api.v2_metadata, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}", api.v2_metadata, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _no_route})


async def _no_route(request: Request, exc: HTTPException) -> JSONResponse:
    if exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
        return JSONResponse(error_body(grpc.StatusCode.UNIMPLEMENTED, message), status_code=405)
    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path} (see /v1/models/<name> and /v2)"
        return JSONResponse(error_body(grpc.StatusCode.NOT_FOUND, message), status_code=404)
    return JSONResponse(error_body(grpc.StatusCode.UNKNOWN, str(exc.detail)), status_code=exc.status_code)


def _endpoint(method: str):
    """Every error the handler raises becomes the mapped JSON error response; `method` names the operation like
    the gRPC method it mirrors, so that both transports word an error the same. The caller is checked first,
    against the role that gRPC method needs."""
    full_method = MIRRORED_METHOD[method]

    def wrap(handler):
        async def call(self, request: Request) -> Response:
            try:
                if self.authenticator is not None:
                    self.authenticator.authorize(full_method, request.headers.get("authorization"))
                return await handler(self, request)
            except Exception as exc:  # noqa: BLE001 - mapped, never swallowed: error_response logs the unexpected
                return error_response(exc, method)
        return call
    return wrap


class _Api:
    def __init__(self, domain: InferenceDomain, ready: Callable[[], bool], max_body_bytes: int,
                 authenticator: Authenticator | None):
        self.domain, self.ready, self.max_body_bytes = domain, ready, max_body_bytes
        self.authenticator = authenticator

    async def _body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise _too_large(int(declared), self.max_body_bytes)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _too_large(size, self.max_body_bytes, at_least=True)
            chunks.append(chunk)
        return b"".join(chunks)

    # ------------------------------------------------------------------ TF Serving-style

    @_endpoint("Classify")
    async def v1_classify(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            version = v2.parse_version(request.path_params.get("version", ""), "version")
            images, top_k = _v1_classify_request(await self._body(request))
        except ClassforgeError as exc:
            metrics.count_rejected(name, exc.code.name, REST)
            raise
        responses = await run_in_threadpool(self.domain.classify_batch, name, images, version=version,
                                            label=request.path_params.get("label", ""), top_k=top_k, protocol=REST)
        return JSONResponse({"results": [json_format.MessageToDict(
            r, preserving_proto_field_name=True, always_print_fields_with_no_presence=True) for r in responses]})

    @_endpoint("ModelStatus")
    async def v1_status(self, request: Request) -> Response:
        version = v2.parse_version(request.path_params.get("version", ""), "version")
        statuses = await run_in_threadpool(self.domain.model_status, request.path_params["name"], version,
                                           request.path_params.get("label", ""))
        return JSONResponse({"model_version_status": [
            {"version": str(s.version), "state": _STATE_NAMES.get(s.state, "UNKNOWN"),
             "status": {"error_code": _CODE_NAMES.get(s.error_code, "UNKNOWN"), "error_message": s.error}}
            for s in statuses]})

    # ------------------------------------------------------------------ Open Inference Protocol v2

    @_endpoint("ServerMetadata")
    async def v2_server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": v2.SERVER_NAME, "version": v2.server_version(), "extensions": v2.EXTENSIONS})

    @_endpoint("ServerLive")
    async def v2_live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    @_endpoint("ServerReady")
    async def v2_ready(self, request: Request) -> Response:
        if not self.ready():
            raise RetryLater("the inference service is not ready: its model server, model base path, Kafka or "
                             "object store is not reachable yet")
        return JSONResponse({"ready": True})

    @_endpoint("ModelReady")
    async def v2_model_ready(self, request: Request) -> Response:
        name = request.path_params["name"]
        version = v2.parse_version(request.path_params.get("version", ""), "version")
        if not await run_in_threadpool(self.domain.model_ready, name, version):
            what = f"model version '{name}/{version}'" if version else f"model {name!r}"
            raise RetryLater(f"{what} is published but not loaded by the model server (yet)")
        return JSONResponse({"name": name, "ready": True})

    @_endpoint("ModelMetadata")
    async def v2_metadata(self, request: Request) -> Response:
        version = v2.parse_version(request.path_params.get("version", ""), "version")
        meta = await run_in_threadpool(self.domain.model_metadata, request.path_params["name"], version)
        return JSONResponse(v2.metadata(meta))

    @_endpoint("ModelInfer")
    async def v2_infer(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            version = v2.parse_version(request.path_params.get("version", ""))
            infer = _v2_infer_request(await self._body(request), request.headers.get(_HEADER_LENGTH))
        except ClassforgeError as exc:
            metrics.count_rejected(name, exc.code.name, V2_REST)
            raise
        prediction = await run_in_threadpool(
            lambda: self.domain.infer(name, infer.images, version=version, outputs=infer.outputs or None,
                                          time_remaining=infer.timeout, protocol=V2_REST))
        document: dict[str, Any] = {"model_name": prediction.model, "model_version": str(prediction.version)}
        if infer.id:
            document["id"] = infer.id
        document["outputs"], blobs = [], []
        for output, array in prediction.outputs.items():
            entry: dict[str, Any] = {"name": output, "datatype": v2.datatype(array), "shape": list(array.shape)}
            if infer.binary.get(output, infer.binary_output):
                blob = v2.raw(array)
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = np.asarray(array).reshape(-1).tolist()
            document["outputs"].append(entry)
        header = json.dumps(document, separators=(",", ":")).encode()
        if not blobs:
            return Response(header, media_type="application/json")
        return Response(header + b"".join(blobs), media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(len(header))})


def _too_large(size: int, limit: int, at_least: bool = False) -> ResourceExhausted:
    return ResourceExhausted(f"body: {'more than ' if at_least else ''}{size} bytes is more than the limit of "
                             f"{limit} (CLASSFORGE_MAX_MESSAGE_BYTES)")


# ---------------------------------------------------------------------- request decoding

def _json_object(data: bytes, what: str = "body") -> dict:
    if not data.strip():
        raise InvalidArgument(what, "is empty: send a JSON object")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(what, f"is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidArgument(what, f"must be a JSON object, got {type(document).__name__}")
    return document


def decode_base64(text: Any, where: str) -> bytes:
    """Standard or URL-safe base64, padding optional."""
    if not isinstance(text, str):
        raise InvalidArgument(where, f"must be a base64 string, got {type(text).__name__}")
    padded = text + "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.b64decode(padded, altchars=b"-_", validate=True)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgument(where, f"is not valid base64: {exc}") from None


def _v1_image(item: Any, where: str) -> bytes:
    if isinstance(item, dict) and set(item) == {contract.INPUT_KEY}:  # row form with the input named
        item, where = item[contract.INPUT_KEY], f"{where}.{contract.INPUT_KEY}"
    if isinstance(item, dict) and set(item) == {"b64"}:
        return decode_base64(item["b64"], f"{where}.b64")
    if isinstance(item, str):
        raise InvalidArgument(where, 'is a plain string, which TF Serving\'s REST API reads as text; send the '
                                     'image as {"b64": "<base64>"}')
    raise InvalidArgument(where, 'must be {"b64": "<base64 image>"} (or {"image_bytes": {"b64": …}})')


def _v1_classify_request(body: bytes) -> tuple[list[bytes], int]:
    document = _json_object(body)
    unknown = sorted(set(document) - _V1_ACCEPTED)
    if unknown:
        raise InvalidArgument(_key(unknown[0]), f"is not accepted; a classify request holds "
                                          f"{', '.join(sorted(_V1_ACCEPTED))}")
    signature = document.get("signature_name", contract.SIGNATURE_NAME)
    if signature != contract.SIGNATURE_NAME:
        raise InvalidArgument("signature_name", f"must be {contract.SIGNATURE_NAME!r} (the only signature served), "
                                                f"got {shown(signature)}")
    given = [key for key in _V1_KEYS if key in document]
    if len(given) != 1:
        raise InvalidArgument("instances", "send the images in exactly one of instances, inputs or examples")
    key = given[0]
    items = document[key]
    if key == "inputs" and isinstance(items, dict):
        if set(items) != {contract.INPUT_KEY}:
            raise InvalidArgument("inputs", f"must name the model's one input, {contract.INPUT_KEY!r}")
        items, key = items[contract.INPUT_KEY], f"inputs.{contract.INPUT_KEY}"
    if not isinstance(items, list):
        raise InvalidArgument(key, f"must be a list of images, got {type(items).__name__}")
    top_k = document.get("top_k", 0)
    if not isinstance(top_k, int) or isinstance(top_k, bool):
        raise InvalidArgument("top_k", f"must be an integer, got {shown(top_k)}")
    return [_v1_image(item, f"{key}[{index}]") for index, item in enumerate(items)], top_k


@dataclass
class _InferRequest:
    images: list[bytes]
    id: str = ""
    outputs: list[str] = field(default_factory=list)
    binary: dict[str, bool] = field(default_factory=dict)  # per requested output
    binary_output: bool = False  # the request's default
    timeout: float | None = None  # seconds


def _flatten(data: Any) -> list:
    if isinstance(data, list):
        return [item for element in data for item in _flatten(element)]
    return [data]


def _int_list(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise InvalidArgument(where, f"must be a list of integers, got {shown(value)}")
    return value


def _v2_infer_request(body: bytes, header_length: str | None) -> _InferRequest:
    binary = b""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InvalidArgument("Inference-Header-Content-Length",
                                  f"must be the byte count of the JSON within the {len(body)}-byte body, got "
                                  f"{shown(header_length)}")
        body, binary = body[:int(header_length)], body[int(header_length):]
    document = _json_object(body)
    unknown = sorted(set(document) - _V2_ACCEPTED)
    if unknown:
        raise InvalidArgument(_key(unknown[0]), f"is not accepted; an inference request holds "
                                          f"{', '.join(sorted(_V2_ACCEPTED))}")
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("id", f"must be a string, got {shown(request_id)}")
    parameters = _parameters(document.get("parameters", {}), "parameters")
    timeout = parameters.get("timeout")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0):
        raise InvalidArgument("parameters.timeout", f"must be a positive number of microseconds, got {shown(timeout)}")

    inputs = document.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidArgument("inputs", "must be a list of one input, 'image_bytes' (BYTES, shape [-1])")
    tensor = inputs[0]
    name, datatype = tensor.get("name"), tensor.get("datatype")
    shape = _int_list(tensor.get("shape"), "inputs[0].shape")
    v2.check_input(name, datatype, shape, "inputs[0]")
    size = _parameters(tensor.get("parameters", {}), "inputs[0].parameters").get("binary_data_size")
    if size is not None:
        if "data" in tensor:
            raise InvalidArgument("inputs[0]", "has both data and parameters.binary_data_size; send one of them")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary):
            raise InvalidArgument("inputs[0].parameters.binary_data_size",
                                  f"is {shown(size)} but {len(binary)} bytes of binary data follow the JSON")
        images = v2.deserialize_bytes(binary[:size], "inputs[0] binary data")
        binary = binary[size:]
    else:
        if "data" not in tensor:
            raise InvalidArgument("inputs[0].data", "is missing: send the images as base64 strings, or as binary data "
                                                    "(Inference-Header-Content-Length)")
        images = [decode_base64(item, f"inputs[0].data[{index}]")
                  for index, item in enumerate(_flatten(tensor["data"]))]
    if binary:
        raise InvalidArgument("body", f"{len(binary)} bytes of binary data follow the JSON but no input claims them")
    v2.check_count(shape, len(images), "inputs[0]")

    request = _InferRequest(images, request_id, binary_output=parameters.get("binary_data_output", False) is True,
                            timeout=timeout / 1e6 if timeout else None)
    outputs = document.get("outputs", [])
    if not isinstance(outputs, list):
        raise InvalidArgument("outputs", f"must be a list, got {type(outputs).__name__}")
    for index, output in enumerate(outputs):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise InvalidArgument(f"outputs[{index}]", 'must be {"name": "<output>"}')
        options = _parameters(output.get("parameters", {}), f"outputs[{index}].parameters")
        unknown = sorted(set(options) - {"binary_data"})
        if unknown:
            raise InvalidArgument(f"outputs[{index}].parameters",
                                  f"{shown(unknown[0])} is not supported (the outputs are the model's tensors as "
                                  f"they are)")
        request.outputs.append(output["name"])
        if "binary_data" in options:
            request.binary[output["name"]] = options["binary_data"] is True
    return request


def _key(key: str, limit: int = 80) -> str:
    """A caller's JSON key named as the field of a message, cut like errors.shown cuts values."""
    return key if len(key) <= limit else key[:limit - 1] + "…"


def _parameters(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidArgument(where, f"must be an object, got {type(value).__name__}")
    return value
