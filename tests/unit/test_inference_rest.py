"""REST on the inference service, TF Serving-style (/v1), in one process against the model-server stand-in over
real gRPC (tests/inference_stack.py): classify answers exactly what gRPC Classify answers, model status, every
kind of bad request (a 4xx with gRPC's message; the service keeps serving), 503 while a version is not loaded
or the model server is down, metrics by protocol, and the service wiring: REST starts once the service is ready
and drains on stop."""

from __future__ import annotations

import base64
import json
import socket
import struct
import threading
import time
import urllib.error
import urllib.request

import grpc
import pytest
from google.protobuf import json_format
from prometheus_client import REGISTRY

from classforge.v1 import inference_service_pb2 as pb
from services.common.events import InProcessEventBus
from services.common.grpc_server import GrpcServer
from services.common.http_server import HttpServer
from services.common.runtime import ServiceContext
from services.inference import main
from services.inference.classifier import Classifier
from services.inference.domain import InferenceDomain
from services.inference.http_api import build_app
from services.inference.model_server_client import ModelServerClient
from services.inference.settings import InferenceSettings
from services.model_server.core import LoadedVersion
from tests.inference_stack import BOMB, IMAGES, NOT_AN_IMAGE, TRUNCATED, UNDECODABLE, Stack, build_exports
from tests.support import toy_model

MAX_BODY = 300_000
MAX_IMAGE = 100_000


TOO_BIG = b"\x89PNG\r\n\x1a\n" + b"\x00" * (MAX_IMAGE + 8)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def instances(*images: bytes, **extra) -> dict:
    return {"instances": [{"b64": b64(image)} for image in images], **extra}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("rest")
    s = Stack(root, build_exports(root / "exports"), max_body_bytes=MAX_BODY, max_batch_images=4,
              max_image_bytes=MAX_IMAGE)
    s.publish("job-a", 1)  # version 1
    s.publish("job-b", 2)  # version 2, the serving version
    yield s
    s.close()


def parsed(result: dict) -> pb.ClassifyResponse:
    return json_format.ParseDict(result, pb.ClassifyResponse())


def grpc_failure(stack: Stack, image: bytes, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        stack.classify(image, **{"model_name": "toy", **kwargs})
    return caught.value.code(), caught.value.details()


def assert_still_serving(stack: Stack) -> None:
    status, body = stack.json("POST", "/v1/models/toy:classify", instances(IMAGES[0], top_k=1))
    assert status == 200, body
    assert parsed(body["results"][0]) == stack.classify(IMAGES[0], model_name="toy", top_k=1)


# ---------------------------------------------------------------------- classify

def test_classify_answers_exactly_what_grpc_classify_answers(stack):
    for image in IMAGES:
        status, body = stack.json("POST", "/v1/models/toy:classify", instances(image, top_k=3))
        assert status == 200, body
        (result,) = body["results"]
        assert result["model_name"] == "toy" and result["version"] == "2"
        assert parsed(result) == stack.classify(image, model_name="toy", top_k=3)

    # A batch is one Predict; each result is still exactly the single-image answer.
    status, body = stack.json("POST", "/v1/models/toy:classify", instances(*IMAGES[:4], top_k=2))
    assert status == 200, body
    assert [parsed(r) for r in body["results"]] == [stack.classify(i, model_name="toy", top_k=2) for i in IMAGES[:4]]
    assert [len(p["top"]) for p in body["results"][0]["predictions"]] == [2, 2]

    # Without top_k: the default (5), i.e. every class of these 3- and 2-class heads; class id 0 is printed too.
    status, body = stack.json("POST", "/v1/models/toy:classify", instances(IMAGES[0]))
    assert [len(p["top"]) for p in body["results"][0]["predictions"]] == [3, 2]
    assert sorted(s["class_id"] for s in body["results"][0]["predictions"][0]["top"]) == [0, 1, 2]
    assert parsed(body["results"][0]) == stack.classify(IMAGES[0], model_name="toy")


def test_classify_a_version_or_a_label(stack):
    image = IMAGES[1]
    status, body = stack.json("POST", "/v1/models/toy/versions/1:classify", instances(image, top_k=3))
    assert status == 200 and body["results"][0]["version"] == "1"
    assert parsed(body["results"][0]) == stack.classify(image, model_name="toy", version=1, top_k=3)
    status, body = stack.json("POST", "/v1/models/toy/labels/stable:classify", instances(image, top_k=3))
    assert status == 200 and body["results"][0]["version"] == "2"
    assert parsed(body["results"][0]) == stack.classify(image, model_name="toy", top_k=3)
    assert stack.json("POST", "/v1/models/toy/labels/canary:classify", instances(image)) == (
        404, {"error": "version label 'toy/canary' not found", "code": "NOT_FOUND"})


@pytest.mark.parametrize("body", [
    {"instances": [{"image_bytes": {"b64": b64(IMAGES[2])}}]},  # row form, the input named
    {"inputs": {"image_bytes": [{"b64": b64(IMAGES[2])}]}},  # columnar form
    {"inputs": [{"b64": b64(IMAGES[2])}]},
    {"examples": [{"image_bytes": {"b64": b64(IMAGES[2])}}]},  # classify's examples
    {"signature_name": "serving_default", "instances": [{"b64": b64(IMAGES[2])}]},
    {"instances": [{"b64": base64.urlsafe_b64encode(IMAGES[2]).decode().rstrip("=")}]},  # URL-safe, no padding
], ids=["row-named", "columnar", "inputs-list", "examples", "signature", "urlsafe-unpadded"])
def test_tf_serving_request_shapes_are_accepted(stack, body):
    status, reply = stack.json("POST", "/v1/models/toy:classify", {**body, "top_k": 2})
    assert status == 200, reply
    assert parsed(reply["results"][0]) == stack.classify(IMAGES[2], model_name="toy", top_k=2)


# ---------------------------------------------------------------------- status

def test_model_status_like_tf_serving(stack):
    available = {"state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    assert stack.json("GET", "/v1/models/toy") == (200, {"model_version_status": [
        {"version": "2", **available}, {"version": "1", **available}]})
    assert stack.json("GET", "/v1/models/toy/versions/1") == (200, {"model_version_status": [
        {"version": "1", **available}]})
    assert stack.json("GET", "/v1/models/toy/labels/stable") == (200, {"model_version_status": [
        {"version": "2", **available}]})
    assert stack.json("GET", "/v1/models/nope") == (404, {"error": "model 'nope' not found", "code": "NOT_FOUND"})
    assert stack.json("GET", "/v1/models/toy/versions/7") == (
        404, {"error": "model version 'toy/7' not found", "code": "NOT_FOUND"})
    assert stack.json("GET", "/v1/models/toy/labels/canary") == (
        404, {"error": "version label 'toy/canary' not found", "code": "NOT_FOUND"})
    assert stack.json("GET", "/v1/models/toy/versions/x1") == (400, {
        "error": "version: 'x1' is not a version number (a positive integer)", "code": "INVALID_ARGUMENT"})


# ---------------------------------------------------------------------- bad requests

@pytest.mark.parametrize("image, status, code", [
    (b"", 400, grpc.StatusCode.INVALID_ARGUMENT),
    (NOT_AN_IMAGE, 400, grpc.StatusCode.INVALID_ARGUMENT),
    (UNDECODABLE, 400, grpc.StatusCode.INVALID_ARGUMENT),
    (TRUNCATED, 400, grpc.StatusCode.INVALID_ARGUMENT),
    (BOMB, 400, grpc.StatusCode.INVALID_ARGUMENT),
    (TOO_BIG, 413, grpc.StatusCode.RESOURCE_EXHAUSTED),
], ids=["empty", "not-an-image", "undecodable", "truncated-jpeg", "50000x50000-png", "over-the-byte-limit"])
def test_a_bad_image_gets_the_grpc_message_and_code(stack, image, status, code):
    grpc_code, message = grpc_failure(stack, image)
    assert grpc_code == code and message.startswith("image: ")
    assert stack.json("POST", "/v1/models/toy:classify", instances(image)) == (
        status, {"error": message, "code": code.name})
    assert_still_serving(stack)


def test_the_messages_name_the_problem(stack):
    assert grpc_failure(stack, BOMB)[1] == ("image: declares 50000x50000 = 2500000000 pixels, more than the limit "
                                            "of 50000000 (CLASSFORGE_MAX_IMAGE_PIXELS)")
    assert grpc_failure(stack, b"")[1] == "image: is empty: send the encoded image bytes (JPEG, PNG, GIF, BMP or WebP)"
    assert grpc_failure(stack, TOO_BIG)[1] == (f"image: {len(TOO_BIG)} bytes is more than the limit of {MAX_IMAGE} "
                                               f"(CLASSFORGE_MAX_IMAGE_BYTES)")
    assert grpc_failure(stack, UNDECODABLE)[1].startswith("image: model 'toy' cannot use it: ")
    assert grpc_failure(stack, TRUNCATED)[1].startswith("image: model 'toy' cannot use it: ")


@pytest.mark.parametrize("fmt, options, mode", [
    ("JPEG", {}, "RGB"), ("JPEG", {"progressive": True}, "RGB"), ("PNG", {}, "RGB"), ("GIF", {}, "RGB"),
    ("BMP", {}, "RGB"), ("BMP", {}, "L"), ("WEBP", {}, "RGB"), ("WEBP", {"lossless": True}, "RGB"),
    ("WEBP", {}, "RGBA"),  # extended (VP8X) WebP
])
def test_the_pixel_guard_reads_each_formats_header(fmt, options, mode):
    import io

    import numpy as np
    from PIL import Image

    from services.common.image_headers import declared_size, sniff_format

    pixels = np.random.default_rng(0).integers(0, 256, (13, 21, len(mode)), dtype=np.uint8).squeeze()
    out = io.BytesIO()
    Image.fromarray(pixels, mode).save(out, format=fmt, **options)
    data = out.getvalue()
    assert sniff_format(data) == fmt.lower() and declared_size(data) == (21, 13)
    assert declared_size(data[:10]) is None or fmt == "GIF"  # a header cut short gives no size (GIF's fits in 10 bytes)


def test_a_jpeg_declaring_too_many_pixels_is_refused_before_decoding(stack):
    jpeg = bytearray(toy_model.jpeg(16, 16, 1))
    at = jpeg.index(b"\xff\xc0")  # baseline start of frame: length, precision, height, width
    jpeg[at + 5:at + 9] = struct.pack(">HH", 60_000, 60_000)
    message = ("image: declares 60000x60000 = 3600000000 pixels, more than the limit of 50000000 "
               "(CLASSFORGE_MAX_IMAGE_PIXELS)")
    assert grpc_failure(stack, bytes(jpeg)) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    assert stack.json("POST", "/v1/models/toy:classify", instances(bytes(jpeg))) == (
        400, {"error": message, "code": "INVALID_ARGUMENT"})


def test_a_bad_image_in_a_batch_is_named_by_its_index(stack):
    _, message = grpc_failure(stack, UNDECODABLE)
    status, body = stack.json("POST", "/v1/models/toy:classify", instances(IMAGES[0], IMAGES[1], UNDECODABLE))
    assert (status, body) == (400, {"error": message.replace("image: ", "image[2]: ", 1), "code": "INVALID_ARGUMENT"})
    status, body = stack.json("POST", "/v1/models/toy:classify", instances(IMAGES[0], NOT_AN_IMAGE))
    assert (status, body["error"]) == (400, "image[1]: is not a JPEG, PNG, GIF, BMP or WebP image (it starts with "
                                            "74 68 69 73 20 69 73 20)")
    assert_still_serving(stack)


@pytest.mark.parametrize("body, message", [
    (b"", "body: is empty: send a JSON object"),
    (b"   ", "body: is empty: send a JSON object"),
    (b'{"instances": [', "body: is not valid JSON: Expecting value: line 1 column 16 (char 15)"),
    (b"[1, 2]", "body: must be a JSON object, got list"),
    (b'{"instances": [{"b64": "not base64!"}]}',
     "instances[0].b64: is not valid base64: Only base64 data is allowed"),
    (b'{"instances": [{"b64": "QUJD"}], "signature_name": "predict_images"}',
     "signature_name: must be 'serving_default' (the only signature served), got 'predict_images'"),
    (b'{"instances": ["QUJD"]}',
     'instances[0]: is a plain string, which TF Serving\'s REST API reads as text; send the image as '
     '{"b64": "<base64>"}'),
    (b'{"instances": [{"image": "QUJD"}]}',
     'instances[0]: must be {"b64": "<base64 image>"} (or {"image_bytes": {"b64": …}})'),
    (b'{"instances": [], "examples": []}',
     "instances: send the images in exactly one of instances, inputs or examples"),
    (b'{"instances": {"b64": "QUJD"}}', "instances: must be a list of images, got dict"),
    (b'{"instances": [{"b64": "QUJD"}], "context": {}}',
     "context: is not accepted; a classify request holds examples, inputs, instances, signature_name, top_k"),
    (b'{"instances": [{"b64": "QUJD"}], "top_k": "3"}', "top_k: must be an integer, got '3'"),
    (json.dumps(instances(IMAGES[0], top_k=-1)).encode(), "top_k: must be 0 (the default, 5) or more, got -1"),
    (b'{"instances": []}', "batch: is empty: send at least one image"),
    (json.dumps(instances(*IMAGES)).encode(),
     "batch: 5 images is more than the limit of 4 per request (CLASSFORGE_MAX_BATCH_IMAGES); split the request"),
], ids=["empty", "blank", "malformed", "not-an-object", "invalid-base64", "signature", "plain-string",
        "not-b64-object", "two-sources", "not-a-list", "unknown-key", "top-k-type", "negative-top-k", "no-images",
        "batch-over-limit"])
def test_a_bad_request_is_400_and_the_service_keeps_serving(stack, body, message):
    status, reply = stack.json("POST", "/v1/models/toy:classify", body, {"Content-Type": "application/json"})
    assert (status, reply) == (400, {"error": message, "code": "INVALID_ARGUMENT"}), reply
    assert_still_serving(stack)


def test_a_body_over_the_limit_is_413(stack):
    body = b'{"instances": [{"b64": "' + b"A" * MAX_BODY + b'"}]}'
    assert stack.json("POST", "/v1/models/toy:classify", body) == (413, {
        "error": f"body: {len(body)} bytes is more than the limit of {MAX_BODY} (CLASSFORGE_MAX_MESSAGE_BYTES)",
        "code": "RESOURCE_EXHAUSTED"})
    assert_still_serving(stack)


def test_an_unknown_model_or_version_is_404_with_the_grpc_message(stack):
    for path, kwargs in (("/v1/models/nope:classify", {"model_name": "nope"}),
                         ("/v1/models/toy/versions/9:classify", {"model_name": "toy", "version": 9})):
        with pytest.raises(grpc.RpcError) as caught:
            stack.classify(IMAGES[0], **kwargs)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert stack.json("POST", path, instances(IMAGES[0])) == (
            404, {"error": caught.value.details(), "code": "NOT_FOUND"})
    assert stack.json("POST", "/v1/models/no%20pe:classify", instances(IMAGES[0])) == (400, {
        "error": "model_name: 'no pe' is not a valid model name (letters, digits, '_', '.', '-'; starting with a "
                 "letter or digit; at most 128 characters)", "code": "INVALID_ARGUMENT"})
    assert_still_serving(stack)


def test_a_long_message_is_cut_the_same_on_rest_and_grpc(stack):
    name = "n" * 3000  # not a model name: the message quotes it
    with pytest.raises(grpc.RpcError) as caught:
        stack.classify(IMAGES[0], model_name=name)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(caught.value.details()) == 1000 and caught.value.details().endswith("…")
    assert stack.json("POST", f"/v1/models/{name}:classify", instances(IMAGES[0])) == (
        400, {"error": caught.value.details(), "code": "INVALID_ARGUMENT"})


def test_unknown_endpoints_and_methods_answer_json(stack):
    assert stack.json("GET", "/v1/nothing") == (404, {
        "error": "no such endpoint: GET /v1/nothing (see /v1/models/<name> and /v2)", "code": "NOT_FOUND"})
    assert stack.json("DELETE", "/v1/models/toy") == (405, {
        "error": "DELETE is not allowed on /v1/models/toy", "code": "UNIMPLEMENTED"})


# ---------------------------------------------------------------------- 503

def test_a_version_published_but_not_loaded_is_503_until_the_model_server_loads_it(stack):
    """A model copied into the base path by hand (or a model server that restarted): published, not loaded."""
    import shutil

    shutil.copytree(stack.exports[1], stack.base / "handmade" / "1")
    message = ("model version 'handmade/1' is published but the model server has not loaded it (it does not know "
               "the model); retry shortly")
    assert grpc_failure(stack, IMAGES[0], model_name="handmade", version=1) == (grpc.StatusCode.UNAVAILABLE, message)
    assert stack.json("POST", "/v1/models/handmade/versions/1:classify", instances(IMAGES[0])) == (
        503, {"error": message, "code": "UNAVAILABLE"})
    assert stack.json("GET", "/v2/models/handmade/ready")[0] == 503

    # Without a version the serving label is missing too: the config is re-sent, and the model loads.
    status, body = stack.json("POST", "/v1/models/handmade:classify", instances(IMAGES[0]))
    assert status == 503 and body["code"] == "UNAVAILABLE"
    assert body["error"].startswith("model 'handmade' is published (version(s) 1) but the model server has none of "
                                    "them loaded") and body["error"].endswith("; retry shortly")
    deadline = time.monotonic() + 60
    while stack.json("GET", "/v2/models/handmade/ready")[0] != 200:
        assert time.monotonic() < deadline, "the hand-copied model was never loaded"
        time.sleep(0.1)
    status, body = stack.json("POST", "/v1/models/handmade/versions/1:classify", instances(IMAGES[0], top_k=3))
    assert status == 200
    assert parsed(body["results"][0]) == stack.classify(IMAGES[0], model_name="handmade", version=1, top_k=3)


def test_the_model_server_unavailable_or_the_service_not_ready_is_503(stack):
    client = ModelServerClient("127.0.0.1:1", plaintext=True)
    domain = InferenceDomain(Classifier(client, stack.repo), stack.publisher)
    http = HttpServer("down", build_app(domain, ready=lambda: False, max_body_bytes=MAX_BODY), port=0,
                      host="127.0.0.1", grace_seconds=1)
    port = http.start()
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/toy:classify",
                                         data=json.dumps(instances(IMAGES[0])).encode(), method="POST")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)
        with caught.value as error:
            assert error.code == 503
            body = json.loads(error.read())
        # As on gRPC: the model server's address and the library error go to the log, not to the caller.
        assert body == {"error": "Classify: a dependency of this service cannot be reached right now; retry later",
                        "code": "UNAVAILABLE"}
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=10)
        with caught.value as error:
            assert error.code == 503 and json.loads(error.read())["code"] == "UNAVAILABLE"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/live", timeout=10) as reply:
            assert reply.status == 200 and json.loads(reply.read()) == {"live": True}
    finally:
        http.stop()
        domain.classifier.close()
        client.close()


# ---------------------------------------------------------------------- metrics

def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_rest_requests_count_in_the_request_metrics_by_protocol(stack):
    ok = {"model": "toy", "version": "2", "code": "OK"}
    before = {p: sample("classforge_inference_requests_total", **ok, protocol=p) for p in ("rest", "grpc")}
    latency = sample("classforge_inference_request_duration_seconds_count", model="toy", version="2",
                     protocol="rest")
    rejected = sample("classforge_inference_requests_total", model="toy", version="", code="INVALID_ARGUMENT",
                      protocol="rest")
    errors = sample("classforge_inference_errors_total", code="INVALID_ARGUMENT", protocol="rest")
    images = sample("classforge_inference_images_total", model="toy", protocol="rest")

    assert stack.json("POST", "/v1/models/toy:classify", instances(IMAGES[0], IMAGES[1]))[0] == 200
    stack.classify(IMAGES[0], model_name="toy")
    assert stack.json("POST", "/v1/models/toy:classify", b'{"instances": [{"b64": "%%%"}]}')[0] == 400  # rejected
    assert stack.json("POST", "/v1/models/toy:classify", instances(NOT_AN_IMAGE))[0] == 400  # by the classifier

    assert sample("classforge_inference_requests_total", **ok, protocol="rest") == before["rest"] + 1  # one batch
    assert sample("classforge_inference_requests_total", **ok, protocol="grpc") == before["grpc"] + 1
    assert sample("classforge_inference_request_duration_seconds_count", model="toy", version="2",
                  protocol="rest") == latency + 1
    assert sample("classforge_inference_requests_total", model="toy", version="", code="INVALID_ARGUMENT",
                  protocol="rest") == rejected + 2
    assert sample("classforge_inference_errors_total", code="INVALID_ARGUMENT", protocol="rest") == errors + 2
    assert sample("classforge_inference_images_total", model="toy", protocol="rest") == images + 2

    # A name that is no model name never becomes a series of its own.
    invalid = sample("classforge_inference_requests_total", model="(invalid)", version="", code="INVALID_ARGUMENT",
                     protocol="rest")
    assert stack.json("POST", "/v1/models/%2E%2Eetc:classify", instances(IMAGES[0]))[0] == 400
    assert stack.json("POST", "/v1/models/%2E%2Eetc:classify", b"{")[0] == 400
    assert sample("classforge_inference_requests_total", model="(invalid)", version="", code="INVALID_ARGUMENT",
                  protocol="rest") == invalid + 2


# ---------------------------------------------------------------------- the service's wiring

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_http_server_start_failures_can_be_retried(stack, monkeypatch):
    import uvicorn

    app = build_app(stack.domain, ready=lambda: True, max_body_bytes=MAX_BODY)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = HttpServer("busy", app, port=port, host="127.0.0.1", grace_seconds=1)
        with pytest.raises(RuntimeError, match=f"busy: cannot bind HTTP port 127.0.0.1:{port}: Address already in use"):
            busy.start()

    async def broken(self, sockets=None):
        raise SystemExit(3)  # what uvicorn does when its start-up fails

    server = HttpServer("flaky", app, port=0, host="127.0.0.1", grace_seconds=1)
    monkeypatch.setattr(uvicorn.Server, "startup", broken)
    with pytest.raises(RuntimeError, match="flaky: the HTTP server on port .* did not start"):
        server.start(timeout=5)
    monkeypatch.undo()
    port = server.start()  # the retried on_ready step starts it for real
    try:
        assert server.start() == port  # already running: nothing more
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/live", timeout=10) as reply:
            assert json.loads(reply.read()) == {"live": True}
    finally:
        server.stop()
        server.stop()  # idempotent
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/live", timeout=5)


def test_settings_rest_port():
    required = {"CLASSFORGE_KAFKA_BOOTSTRAP": "k:1", "CLASSFORGE_S3_ENDPOINT": "s:1", "CLASSFORGE_S3_ACCESS_KEY": "a",
                "CLASSFORGE_S3_SECRET_KEY": "s", "CLASSFORGE_MODEL_BASE_PATH": "/m"}
    assert InferenceSettings.load(environ=required).rest_port == 8086
    assert InferenceSettings.load(environ={**required, "CLASSFORGE_HTTP_PORT": "9000"}).rest_port == 9000
    assert InferenceSettings.load(environ={**required, "CLASSFORGE_HTTP_PORT": "-1"}).rest_port == -1


def test_the_service_starts_rest_once_ready_and_drains_it_on_stop(stack, monkeypatch):
    port = free_port()
    settings = InferenceSettings.load(environ={
        "CLASSFORGE_KAFKA_BOOTSTRAP": "unused:1", "CLASSFORGE_S3_ENDPOINT": "unused:1",
        "CLASSFORGE_S3_ACCESS_KEY": "unused", "CLASSFORGE_S3_SECRET_KEY": "unused",
        "CLASSFORGE_MODEL_BASE_PATH": str(stack.base),
        "CLASSFORGE_MODEL_SERVER": f"127.0.0.1:{stack.model_server.port}",
        "CLASSFORGE_HTTP_PORT": str(port), "CLASSFORGE_LISTEN_HOST": "127.0.0.1", "CLASSFORGE_RECONCILE_SECONDS": "0",
        "CLASSFORGE_GRACE_SECONDS": "5", "CLASSFORGE_GRPC_PLAINTEXT": "true"})
    bus = InProcessEventBus()
    server = GrpcServer("inference", port=0, host="127.0.0.1", grace_seconds=5, recheck_seconds=0.2,
                        plaintext=True)
    main.build(ServiceContext("inference", settings, stack.store, bus, server, lambda: stack.store))
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(urllib.error.URLError):  # nothing listens before the service is ready
        urllib.request.urlopen(f"{url}/v2/health/live", timeout=5)
    server.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5) as reply:
                    assert json.loads(reply.read()) == {"ready": True}
                    break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "REST never became ready"
                time.sleep(0.1)

        # A request in flight when the service stops still gets its answer; then nothing listens.
        slow = LoadedVersion.predict

        def predict(self, *args, **kwargs):
            time.sleep(1.0)
            return slow(self, *args, **kwargs)

        monkeypatch.setattr(LoadedVersion, "predict", predict)
        answered: dict = {}

        def call():
            request = urllib.request.Request(f"{url}/v1/models/toy:classify", method="POST",
                                             data=json.dumps(instances(IMAGES[0], top_k=1)).encode())
            with urllib.request.urlopen(request, timeout=30) as reply:
                answered["status"], answered["body"] = reply.status, json.loads(reply.read())

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.4)
        server.stop()
        caller.join(30)
        assert answered["status"] == 200 and answered["body"]["results"][0]["version"] == "2"
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"{url}/v2/health/live", timeout=5)
    finally:
        server.stop()
        bus.close()
