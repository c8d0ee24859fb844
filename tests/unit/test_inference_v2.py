"""The Open Inference Protocol v2 on the inference service, in one process against the model-server stand-in over
real gRPC (tests/inference_stack.py), through four clients: plain HTTP (urllib), tritonclient.http (binary data
extension and JSON), our gRPC stub of KServe's grpc_predict_v2.proto (bytes_contents and raw_input_contents) and
tritonclient.grpc. tritonclient.grpc runs in a child process (tests/triton_grpc_client.py): its own copy of the
`inference` protos cannot share a descriptor pool with ours. The outputs are the serving contract's tensors and
equal, bit for bit, what Classify answers for the same images; every bad request is a clear 4xx / INVALID_ARGUMENT
or NOT_FOUND and the next good request succeeds."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import tritonclient.http as triton_http
from google.protobuf import json_format
from prometheus_client import REGISTRY
from tritonclient.utils import InferenceServerException

from classforge.third_party.kserve import grpc_predict_v2_pb2 as v2pb
from services.inference import v2
from tests.conftest import REPO_ROOT
from tests.inference_stack import BOMB, IMAGES, NOT_AN_IMAGE, TRUNCATED, UNDECODABLE, Stack, build_exports
from tests.support import toy_model

OUTPUTS = ["probabilities_label", "class_ids_label", "probabilities_color", "class_ids_color"]
METADATA = {
    "name": "toy", "versions": ["1", "2"], "platform": "tensorflow_savedmodel",
    "inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}],
    "outputs": [{"name": "probabilities_label", "datatype": "FP32", "shape": [-1, 3]},
                {"name": "class_ids_label", "datatype": "INT64", "shape": [-1]},
                {"name": "probabilities_color", "datatype": "FP32", "shape": [-1, 2]},
                {"name": "class_ids_color", "datatype": "INT64", "shape": [-1]}],
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2")
    s = Stack(root, build_exports(root / "exports"), max_batch_images=4)
    s.publish("job-a", 1)  # version 1
    s.publish("job-b", 2)  # version 2, the serving version
    yield s
    s.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def classify_tensors(stack: Stack, images: list[bytes], version: int = 0) -> dict[str, np.ndarray]:
    """What gRPC Classify answers for each image, as the contract's tensors: the reference of every v2 answer."""
    tensors: dict[str, list] = {name: [] for name in OUTPUTS}
    for image in images:
        response = stack.classify(image, model_name="toy", version=version, top_k=10)
        for prediction in response.predictions:
            row = np.zeros(len(prediction.top), np.float32)
            for score in prediction.top:
                row[score.class_id] = score.probability
            tensors[f"probabilities_{prediction.task}"].append(row)
            tensors[f"class_ids_{prediction.task}"].append(prediction.top[0].class_id)
    return {"probabilities_label": np.array(tensors["probabilities_label"], np.float32),
            "class_ids_label": np.array(tensors["class_ids_label"], np.int64),
            "probabilities_color": np.array(tensors["probabilities_color"], np.float32),
            "class_ids_color": np.array(tensors["class_ids_color"], np.int64)}


def assert_tensors(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(got) == list(expected)
    for name, array in expected.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape, name
        np.testing.assert_array_equal(got[name], array, err_msg=name)


def json_infer(*images: bytes, **extra) -> dict:
    return {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [len(images)],
                        "data": [b64(i) for i in images]}], **extra}


def rest_tensors(body: dict) -> dict[str, np.ndarray]:
    dtypes = {"FP32": np.float32, "INT64": np.int64}
    return {o["name"]: np.array(o["data"], dtypes[o["datatype"]]).reshape(o["shape"]) for o in body["outputs"]}


def grpc_tensors(response: v2pb.ModelInferResponse) -> dict[str, np.ndarray]:
    dtypes = {"FP32": "<f4", "INT64": "<i8"}
    return {o.name: np.frombuffer(raw, dtypes[o.datatype]).reshape(list(o.shape))
            for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)}


def grpc_request(*images: bytes, raw: bool = False, **fields) -> v2pb.ModelInferRequest:
    request = v2pb.ModelInferRequest(model_name=fields.pop("model_name", "toy"), **fields)
    tensor = request.inputs.add(name="image_bytes", datatype="BYTES", shape=[len(images)])
    if raw:
        request.raw_input_contents.append(v2.serialize_bytes(list(images)))
    else:
        tensor.contents.bytes_contents.extend(images)
    return request


def triton_grpc(stack: Stack, calls: list[dict]) -> list[dict]:
    """tritonclient.grpc, in a child process (see the module docstring)."""
    done = subprocess.run([sys.executable, "-m", "tests.triton_grpc_client", stack.address], input=json.dumps(calls),
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def assert_still_serving(stack: Stack) -> None:
    status, body = stack.json("POST", "/v2/models/toy/infer", json_infer(IMAGES[0]))
    assert status == 200, body
    assert_tensors(rest_tensors(body), classify_tensors(stack, [IMAGES[0]]))


# ---------------------------------------------------------------------- health and metadata

def test_health_and_metadata_over_rest(stack):
    assert stack.json("GET", "/v2/health/live") == (200, {"live": True})
    assert stack.json("GET", "/v2/health/ready") == (200, {"ready": True})
    assert stack.json("GET", "/v2") == (200, {"name": "classforge-inference", "version": v2.server_version(),
                                              "extensions": ["binary_tensor_data"]})
    assert stack.json("GET", "/v2/models/toy") == (200, METADATA)
    assert stack.json("GET", "/v2/models/toy/versions/1") == (200, METADATA)
    assert stack.json("GET", "/v2/models/toy/ready") == (200, {"name": "toy", "ready": True})
    assert stack.json("GET", "/v2/models/toy/versions/1/ready") == (200, {"name": "toy", "ready": True})
    assert stack.json("GET", "/v2/models/nope") == (404, {"error": "model 'nope' not found", "code": "NOT_FOUND"})
    assert stack.json("GET", "/v2/models/nope/ready") == (404, {"error": "model 'nope' not found", "code": "NOT_FOUND"})
    assert stack.json("GET", "/v2/models/toy/versions/9/ready") == (
        404, {"error": "model version 'toy/9' not found", "code": "NOT_FOUND"})
    assert stack.json("GET", "/v2/models/toy/versions/9")[0] == 404
    assert stack.json("GET", "/v2/models/toy/versions/0") == (400, {
        "error": "version: '0' is not a version number (a positive integer)", "code": "INVALID_ARGUMENT"})

    client = triton_http.InferenceServerClient(stack.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("toy") and client.is_model_ready("toy", "1")
        assert not client.is_model_ready("nope") and not client.is_model_ready("toy", "9")
        assert client.get_model_metadata("toy") == METADATA
        assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    finally:
        client.close()


def test_health_and_metadata_over_grpc(stack):
    assert stack.v2.ServerLive(v2pb.ServerLiveRequest(), timeout=10).live is True
    assert stack.v2.ServerReady(v2pb.ServerReadyRequest(), timeout=10).ready is True
    assert stack.v2.ServerMetadata(v2pb.ServerMetadataRequest(), timeout=10) == v2pb.ServerMetadataResponse(
        name="classforge-inference", version=v2.server_version(), extensions=["binary_tensor_data"])
    assert stack.v2.ModelReady(v2pb.ModelReadyRequest(name="toy"), timeout=10).ready is True
    assert stack.v2.ModelReady(v2pb.ModelReadyRequest(name="toy", version="1"), timeout=10).ready is True
    expected = json_format.ParseDict(METADATA, v2pb.ModelMetadataResponse())
    assert stack.v2.ModelMetadata(v2pb.ModelMetadataRequest(name="toy"), timeout=10) == expected
    for request, code, message in [
        (v2pb.ModelReadyRequest(name="nope"), grpc.StatusCode.NOT_FOUND, "model 'nope' not found"),
        (v2pb.ModelReadyRequest(name="toy", version="9"), grpc.StatusCode.NOT_FOUND, "model version 'toy/9' not found"),
        (v2pb.ModelReadyRequest(name="toy", version="v1"), grpc.StatusCode.INVALID_ARGUMENT,
         "version: 'v1' is not a version number (a positive integer)"),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            stack.v2.ModelReady(request, timeout=10)
        assert (caught.value.code(), caught.value.details()) == (code, message)
    with pytest.raises(grpc.RpcError) as caught:
        stack.v2.ModelMetadata(v2pb.ModelMetadataRequest(name="nope"), timeout=10)
    assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.NOT_FOUND, "model 'nope' not found")


# ---------------------------------------------------------------------- infer

def test_rest_json_infer_equals_classify(stack):
    images = IMAGES[:3]
    status, body = stack.json("POST", "/v2/models/toy/infer", json_infer(*images, id="req-7"))
    assert status == 200, body
    assert (body["model_name"], body["model_version"], body["id"]) == ("toy", "2", "req-7")
    assert [(o["name"], o["datatype"], o["shape"]) for o in body["outputs"]] == [
        ("probabilities_label", "FP32", [3, 3]), ("class_ids_label", "INT64", [3]),
        ("probabilities_color", "FP32", [3, 2]), ("class_ids_color", "INT64", [3])]
    assert_tensors(rest_tensors(body), classify_tensors(stack, images))

    status, body = stack.json("POST", "/v2/models/toy/versions/1/infer", json_infer(images[0]))
    assert status == 200 and body["model_version"] == "1" and "id" not in body
    assert_tensors(rest_tensors(body), classify_tensors(stack, images[:1], version=1))

    # Shape [batch, 1] with nested data, and only the outputs asked for, in the order asked.
    request = {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [2, 1],
                           "data": [[b64(images[0])], [b64(images[1])]]}],
               "outputs": [{"name": "class_ids_color"}, {"name": "probabilities_label"}]}
    status, body = stack.json("POST", "/v2/models/toy/infer", request)
    assert status == 200, body
    reference = classify_tensors(stack, images[:2])
    assert_tensors(rest_tensors(body), {k: reference[k] for k in ("class_ids_color", "probabilities_label")})


def test_tritonclient_http_binary_and_json(stack):
    images = [IMAGES[0], IMAGES[4], IMAGES[2]]
    reference = classify_tensors(stack, images)
    client = triton_http.InferenceServerClient(stack.url.removeprefix("http://"))
    try:
        # Binary data extension both ways (tritonclient's default).
        tensor = triton_http.InferInput("image_bytes", [3], "BYTES")
        tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
        result = client.infer("toy", [tensor], request_id="binary-1")
        response = result.get_response()
        assert (response["model_name"], response["model_version"], response["id"]) == ("toy", "2", "binary-1")
        assert all("binary_data_size" in o["parameters"] and "data" not in o for o in response["outputs"])
        assert_tensors({name: result.as_numpy(name) for name in OUTPUTS}, reference)

        # JSON both ways: BYTES elements as base64 strings, outputs as JSON data; version 1.
        tensor = triton_http.InferInput("image_bytes", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([b64(images[1])], dtype=np.object_), binary_data=False)
        outputs = [triton_http.InferRequestedOutput("probabilities_color", binary_data=False),
                   triton_http.InferRequestedOutput("class_ids_label", binary_data=True)]
        result = client.infer("toy", [tensor], model_version="1", outputs=outputs)
        response = result.get_response()
        assert response["model_version"] == "1"
        assert [("data" in o, "parameters" in o) for o in response["outputs"]] == [(True, False), (False, True)]
        expected = classify_tensors(stack, images[1:2], version=1)
        assert_tensors({name: result.as_numpy(name) for name in ("probabilities_color", "class_ids_label")},
                       {name: expected[name] for name in ("probabilities_color", "class_ids_label")})
    finally:
        client.close()


def test_grpc_infer_bytes_contents_and_raw_input_contents(stack):
    images = IMAGES[1:4]
    reference = classify_tensors(stack, images)
    for raw in (False, True):
        response = stack.v2.ModelInfer(grpc_request(*images, raw=raw, id="g-1"), timeout=10)
        assert (response.model_name, response.model_version, response.id) == ("toy", "2", "g-1")
        assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
            ("probabilities_label", "FP32", [3, 3]), ("class_ids_label", "INT64", [3]),
            ("probabilities_color", "FP32", [3, 2]), ("class_ids_color", "INT64", [3])]
        assert_tensors(grpc_tensors(response), reference)
    request = grpc_request(images[0], model_version="1")
    request.outputs.add(name="probabilities_label")
    response = stack.v2.ModelInfer(request, timeout=10)
    assert response.model_version == "1"
    assert_tensors(grpc_tensors(response), {"probabilities_label": classify_tensors(
        stack, images[:1], version=1)["probabilities_label"]})


def test_tritonclient_grpc(stack):
    images = [IMAGES[3], IMAGES[0]]
    bad_shape = {"call": "infer", "model": "toy", "images": [b64(i) for i in IMAGES[:4]], "shape": [2, 2]}
    results = triton_grpc(stack, [
        {"call": "is_server_live"}, {"call": "is_server_ready"},
        {"call": "is_model_ready", "model": "toy"}, {"call": "is_model_ready", "model": "toy", "version": "1"},
        {"call": "get_model_metadata", "model": "toy"},
        {"call": "infer", "model": "toy", "images": [b64(i) for i in images], "id": "t-1"},
        {"call": "infer", "model": "toy", "version": "1", "images": [b64(images[0])], "outputs": ["class_ids_label"]},
        {"call": "infer", "model": "toy", "datatype": "FP32", "values": [0.5, 0.25]},
        bad_shape,
        {"call": "infer", "model": "toy", "images": [b64(NOT_AN_IMAGE)]},
        {"call": "infer", "model": "toy", "images": [b64(BOMB)]},
        {"call": "infer", "model": "toy", "images": [b64(i) for i in IMAGES]},
        {"call": "infer", "model": "nope", "images": [b64(images[0])]},
        {"call": "infer", "model": "toy", "version": "9", "images": [b64(images[0])]},
        {"call": "is_model_ready", "model": "nope"},
        {"call": "infer", "model": "toy", "images": [b64(images[0])]},  # still serving
    ])
    assert [r["value"] for r in results[:4]] == [True, True, True, True]
    metadata = results[4]["value"]
    as_json = {key: [{**t, "shape": [str(d) for d in t["shape"]]} for t in METADATA[key]]  # int64 in proto JSON
               for key in ("inputs", "outputs")}
    assert metadata == {**METADATA, **as_json}

    reference = classify_tensors(stack, images)
    answer = results[5]["value"]
    assert (answer["model_name"], answer["model_version"], answer["id"]) == ("toy", "2", "t-1")
    got = {name: np.array(o["data"], reference[name].dtype).reshape(o["shape"])
           for name, o in answer["outputs"].items()}
    assert_tensors(got, reference)
    answer = results[6]["value"]
    assert answer["model_version"] == "1" and list(answer["outputs"]) == ["class_ids_label"]
    assert answer["outputs"]["class_ids_label"]["data"] == classify_tensors(
        stack, images[:1], version=1)["class_ids_label"].tolist()

    invalid, not_found = "StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND"
    assert [r["error"] for r in results[7:15]] == [
        {"status": invalid, "message": "inputs[0].datatype: must be BYTES (encoded images), got 'FP32'"},
        {"status": invalid, "message": "inputs[0].shape: must be [batch] (or [batch, 1]), got [2, 2]"},
        {"status": invalid, "message": grpc_classify_error(stack, NOT_AN_IMAGE)[1]},
        {"status": invalid, "message": grpc_classify_error(stack, BOMB)[1]},
        {"status": invalid, "message": "batch: 5 images is more than the limit of 4 per request "
                                       "(CLASSFORGE_MAX_BATCH_IMAGES); split the request"},
        {"status": not_found, "message": "model 'nope' not found"},
        {"status": not_found, "message": "model version 'toy/9' not found (or it is not loaded); `classforge models` "
                                         "lists the versions served"},
        {"status": not_found, "message": "model 'nope' not found"},
    ]
    assert results[15]["value"]["model_version"] == "2"


# ---------------------------------------------------------------------- bad requests

def grpc_classify_error(stack: Stack, image: bytes) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        stack.classify(image, model_name="toy")
    return caught.value.code(), caught.value.details()


def _request(name="image_bytes", datatype="BYTES", shape=None, data=None, **extra) -> dict:
    data = [b64(IMAGES[0])] if data is None else data
    return {"inputs": [{"name": name, "datatype": datatype, "shape": [len(data)] if shape is None else shape,
                        "data": data}], **extra}


@pytest.mark.parametrize("body, message", [
    (b"", "body: is empty: send a JSON object"),
    (b"{]", "body: is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    (_request(data=["%%%"]), "inputs[0].data[0]: is not valid base64: Only base64 data is allowed"),
    (_request(data=[7]), "inputs[0].data[0]: must be a base64 string, got int"),
    (_request(datatype="FP32", data=[0.5]), "inputs[0].datatype: must be BYTES (encoded images), got 'FP32'"),
    (_request(shape=[1, 2]), "inputs[0].shape: must be [batch] (or [batch, 1]), got [1, 2]"),
    (_request(shape=[3]), "inputs[0].shape: [3] says 3 image(s) but the tensor holds 1"),
    (_request(shape="1"), "inputs[0].shape: must be a list of integers, got '1'"),
    (_request(name="image"), "inputs[0].name: 'image' is not an input of the model; its one input is 'image_bytes' "
                             "(BYTES, shape [-1])"),
    ({"inputs": []}, "inputs: must be a list of one input, 'image_bytes' (BYTES, shape [-1])"),
    ({"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1]}]},
     "inputs[0].data: is missing: send the images as base64 strings, or as binary data "
     "(Inference-Header-Content-Length)"),
    (_request(data=[]), "batch: is empty: send at least one image"),
    (_request(data=[b64(i) for i in IMAGES]), "batch: 5 images is more than the limit of 4 per request "
                                              "(CLASSFORGE_MAX_BATCH_IMAGES); split the request"),
    (_request(outputs=[{"name": "scores"}]), "outputs[0].name: 'scores' is not an output of model 'toy' version 2; "
                                             "its outputs are probabilities_label, class_ids_label, "
                                             "probabilities_color, class_ids_color"),
    (_request(outputs=[{"name": "class_ids_label", "parameters": {"classification": 2}}]),
     "outputs[0].parameters: 'classification' is not supported (the outputs are the model's tensors as they are)"),
    (_request(parameters={"timeout": -5}), "parameters.timeout: must be a positive number of microseconds, got -5"),
    ({**_request(), "input": []}, "input: is not accepted; an inference request holds id, inputs, outputs, parameters"),
], ids=["empty", "malformed", "invalid-base64", "not-a-string", "fp32", "shape-rank", "shape-count", "shape-type",
        "input-name", "no-input", "no-data", "empty-batch", "batch-over-limit", "unknown-output", "classification",
        "timeout", "unknown-key"])
def test_a_bad_rest_request_is_400_and_the_service_keeps_serving(stack, body, message):
    status, reply = stack.json("POST", "/v2/models/toy/infer", body)
    assert (status, reply) == (400, {"error": message, "code": "INVALID_ARGUMENT"})
    assert_still_serving(stack)


@pytest.mark.parametrize("image", [b"", NOT_AN_IMAGE, UNDECODABLE, TRUNCATED, BOMB],
                         ids=["empty", "not-an-image", "undecodable", "truncated", "50000x50000-png"])
def test_a_bad_image_gets_classifys_message_over_rest_and_grpc(stack, image):
    code, message = grpc_classify_error(stack, image)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert stack.json("POST", "/v2/models/toy/infer", json_infer(image)) == (
        400, {"error": message, "code": "INVALID_ARGUMENT"})
    with pytest.raises(grpc.RpcError) as caught:
        stack.v2.ModelInfer(grpc_request(image), timeout=10)
    assert (caught.value.code(), caught.value.details()) == (code, message)
    assert_still_serving(stack)


def test_bad_binary_data_is_400(stack):
    def post(header: bytes, binary: bytes, length: str | None = None):
        headers = {"Inference-Header-Content-Length": length or str(len(header))}
        return stack.json("POST", "/v2/models/toy/infer", header + binary, headers)

    def header(size: int, count: int = 1) -> bytes:
        return json.dumps({"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [count],
                                       "parameters": {"binary_data_size": size}}]}).encode()

    good = v2.serialize_bytes([IMAGES[0]])
    assert post(header(len(good)), good)[0] == 200
    cases = [
        (post(header(len(good) + 10), good), "inputs[0].parameters.binary_data_size: is "
                                             f"{len(good) + 10} but {len(good)} bytes of binary data follow the JSON"),
        (post(header(len(good)), good + b"xyz"),
         "body: 3 bytes of binary data follow the JSON but no input claims them"),
        (post(header(6), b"\x10\x00\x00\x00ab"), "inputs[0] binary data: element 0 claims 16 bytes but only 2 remain"),
        (post(header(2), b"\x10\x00"), "inputs[0] binary data: ends inside the 4-byte length of element 0 (byte 0 of "
                                       "2): BYTES elements are a little-endian uint32 length, then the bytes"),
        (post(header(len(good)), good, length="999999"), "Inference-Header-Content-Length: must be the byte count of "
                                                         f"the JSON within the {len(header(len(good))) + len(good)}"
                                                         "-byte body, got '999999'"),
        (post(header(len(good), count=2), good), "inputs[0].shape: [2] says 2 image(s) but the tensor holds 1"),
    ]
    for (status, reply), message in cases:
        assert (status, reply) == (400, {"error": message, "code": "INVALID_ARGUMENT"})
    assert_still_serving(stack)


def test_a_bad_grpc_request_is_invalid_argument_and_the_service_keeps_serving(stack):
    def expect(request: v2pb.ModelInferRequest, code: grpc.StatusCode, message: str):
        with pytest.raises(grpc.RpcError) as caught:
            stack.v2.ModelInfer(request, timeout=10)
        assert (caught.value.code(), caught.value.details()) == (code, message)

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    request = grpc_request(IMAGES[0])
    request.inputs[0].datatype = "UINT8"
    expect(request, invalid, "inputs[0].datatype: must be BYTES (encoded images), got 'UINT8'")
    request = grpc_request(IMAGES[0], IMAGES[1])
    request.inputs[0].shape[:] = [1, 2]
    expect(request, invalid, "inputs[0].shape: must be [batch] (or [batch, 1]), got [1, 2]")
    request = grpc_request(IMAGES[0])
    request.inputs[0].shape[:] = [2]
    expect(request, invalid, "inputs[0].shape: [2] says 2 image(s) but the tensor holds 1")
    request = grpc_request(IMAGES[0])
    request.raw_input_contents.append(v2.serialize_bytes([IMAGES[0]]))
    expect(request, invalid, "inputs[0].contents: is set together with raw_input_contents; send the images in one "
                             "of them")
    request = grpc_request(IMAGES[0])
    request.inputs[0].contents.Clear()
    request.inputs[0].contents.fp32_contents.append(1.0)
    expect(request, invalid, "inputs[0].contents: must hold bytes_contents (BYTES), got fp32_contents")
    request = grpc_request()
    expect(request, invalid, "inputs[0].contents: is empty: send the encoded images as contents.bytes_contents or "
                             "raw_input_contents")
    request = v2pb.ModelInferRequest(model_name="toy", raw_input_contents=[b"\x05\x00\x00\x00abc"])
    request.inputs.add(name="image_bytes", datatype="BYTES", shape=[1])
    expect(request, invalid, "raw_input_contents[0]: element 0 claims 5 bytes but only 3 remain")
    expect(v2pb.ModelInferRequest(model_name="toy"), invalid, "inputs: the model takes one input, 'image_bytes' "
                                                              "(BYTES, shape [-1]); the request has 0")
    expect(grpc_request(*IMAGES), invalid, "batch: 5 images is more than the limit of 4 per request "
                                           "(CLASSFORGE_MAX_BATCH_IMAGES); split the request")
    request = grpc_request(IMAGES[0])
    request.outputs.add(name="probabilities_label").parameters["classification"].int64_param = 2
    expect(request, invalid, "outputs[0].parameters: 'classification' is not supported (the outputs are the model's "
                             "tensors as they are)")
    expect(grpc_request(IMAGES[0], model_name=""), invalid, "model_name: '' is not a valid model name (letters, "
                                                            "digits, '_', '.', '-'; starting with a letter or digit; "
                                                            "at most 128 characters)")
    expect(grpc_request(IMAGES[0], model_version="latest"), invalid,
           "model_version: 'latest' is not a version number (a positive integer)")
    expect(grpc_request(IMAGES[0], model_name="nope"), grpc.StatusCode.NOT_FOUND, "model 'nope' not found")
    expect(grpc_request(IMAGES[0], model_version="9"), grpc.StatusCode.NOT_FOUND,
           "model version 'toy/9' not found (or it is not loaded); `classforge models` lists the versions served")
    assert_tensors(grpc_tensors(stack.v2.ModelInfer(grpc_request(IMAGES[0]), timeout=10)),
                   classify_tensors(stack, [IMAGES[0]]))


def test_unknown_models_and_versions_over_rest_and_tritonclient_http(stack):
    assert stack.json("POST", "/v2/models/nope/infer", json_infer(IMAGES[0])) == (
        404, {"error": "model 'nope' not found", "code": "NOT_FOUND"})
    assert stack.json("POST", "/v2/models/toy/versions/9/infer", json_infer(IMAGES[0])) == (404, {
        "error": "model version 'toy/9' not found (or it is not loaded); `classforge models` lists the versions "
                 "served", "code": "NOT_FOUND"})
    assert stack.json("POST", "/v2/models/toy/versions/x/infer", json_infer(IMAGES[0])) == (400, {
        "error": "model_version: 'x' is not a version number (a positive integer)", "code": "INVALID_ARGUMENT"})
    client = triton_http.InferenceServerClient(stack.url.removeprefix("http://"))
    try:
        tensor = triton_http.InferInput("image_bytes", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([IMAGES[0]], dtype=np.object_))
        for model, version, status, message in [
            ("nope", "", "404", "model 'nope' not found"),
            ("toy", "9", "404", "model version 'toy/9' not found (or it is not loaded); `classforge models` lists "
                                "the versions served"),
        ]:
            with pytest.raises(InferenceServerException) as caught:
                client.infer(model, [tensor], model_version=version)
            assert (caught.value.status(), caught.value.message()) == (status, message)
        wrong = triton_http.InferInput("image_bytes", [2], "FP32")
        wrong.set_data_from_numpy(np.array([0.5, 0.25], np.float32))
        with pytest.raises(InferenceServerException) as caught:
            client.infer("toy", [wrong])
        assert (caught.value.status(), caught.value.message()) == (
            "400", "inputs[0].datatype: must be BYTES (encoded images), got 'FP32'")
        bad = triton_http.InferInput("image_bytes", [1], "BYTES")
        bad.set_data_from_numpy(np.array([toy_model.jpeg(16, 16, 1)[:60]], dtype=np.object_))
        with pytest.raises(InferenceServerException) as caught:
            client.infer("toy", [bad])
        assert (caught.value.status(), caught.value.message()) == ("400", grpc_classify_error(stack, TRUNCATED)[1])
        assert client.infer("toy", [tensor]).as_numpy("class_ids_label").tolist() == classify_tensors(
            stack, [IMAGES[0]])["class_ids_label"].tolist()
    finally:
        client.close()


def test_the_callers_deadline_bounds_infer(stack, monkeypatch):
    from services.model_server.core import LoadedVersion

    slow = LoadedVersion.predict

    def predict(self, *args, **kwargs):
        time.sleep(1.5)
        return slow(self, *args, **kwargs)

    monkeypatch.setattr(LoadedVersion, "predict", predict)
    started = time.monotonic()
    status, body = stack.json("POST", "/v2/models/toy/infer", json_infer(IMAGES[0], parameters={"timeout": 300_000}))
    assert (status, body["code"]) == (504, "DEADLINE_EXCEEDED")
    assert body["error"].startswith("the model server did not answer within the deadline: ")
    with pytest.raises(grpc.RpcError) as caught:
        stack.v2.ModelInfer(grpc_request(IMAGES[0]), timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 1.4  # neither waited for the slow Predict
    monkeypatch.undo()
    time.sleep(1.5)  # let the abandoned Predicts finish before the next test
    assert_still_serving(stack)


# ---------------------------------------------------------------------- metrics

def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_v2_requests_count_in_the_request_metrics_by_protocol(stack):
    ok = {"model": "toy", "version": "2", "code": "OK"}
    rejected = {"model": "toy", "version": "", "code": "INVALID_ARGUMENT"}
    def samples(protocol: str) -> tuple[float, ...]:
        return (sample("classforge_inference_requests_total", **ok, protocol=protocol),
                sample("classforge_inference_requests_total", **rejected, protocol=protocol),
                sample("classforge_inference_request_duration_seconds_count", model="toy", version="2",
                       protocol=protocol),
                sample("classforge_inference_images_total", model="toy", protocol=protocol))

    before = {p: samples(p) for p in ("v2_rest", "v2_grpc")}
    assert stack.json("POST", "/v2/models/toy/infer", json_infer(IMAGES[0], IMAGES[1]))[0] == 200
    assert stack.json("POST", "/v2/models/toy/infer", _request(datatype="FP32"))[0] == 400  # refused by the protocol
    stack.v2.ModelInfer(grpc_request(IMAGES[0]), timeout=10)
    stack.v2.ModelInfer(grpc_request(IMAGES[0], IMAGES[1], IMAGES[2]), timeout=10)
    with pytest.raises(grpc.RpcError):
        stack.v2.ModelInfer(grpc_request(NOT_AN_IMAGE), timeout=10)  # refused by the classifier
    after = {p: samples(p) for p in ("v2_rest", "v2_grpc")}
    # requests OK, refused, latency observations, images classified
    assert [a - b for a, b in zip(after["v2_rest"], before["v2_rest"], strict=True)] == [1, 1, 1, 2]
    assert [a - b for a, b in zip(after["v2_grpc"], before["v2_grpc"], strict=True)] == [2, 1, 2, 4]
