"""Metrics of the inference service (gRPC-level counters come from the shared interceptor).

Classification requests are counted once per request, whatever the protocol, with the label `protocol`:
`grpc` (classforge.v1 Classify, each image of ClassifyStream), `rest` (TF Serving-style /v1 classify),
`v2_rest` and `v2_grpc` (Open Inference Protocol v2 infer)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from services.inference.repository import MODEL_NAME

REQUESTS = Counter("classforge_inference_requests_total",
                   "Classification requests (one image for Classify, a batch for REST and v2 infer), by model, "
                   "answering version, status code and protocol.", ["model", "version", "code", "protocol"])
LATENCY = Histogram("classforge_inference_request_duration_seconds",
                    "Time to answer one successful classification request (Predict included), by model, answering "
                    "version and protocol.", ["model", "version", "protocol"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
IMAGES = Counter("classforge_inference_images_total", "Images classified successfully, by model and protocol.",
                 ["model", "protocol"])
ERRORS = Counter("classforge_inference_errors_total", "Failed classification requests, by status code and protocol.",
                 ["code", "protocol"])
IMAGE_BYTES = Counter("classforge_inference_image_bytes_total", "Bytes of images received, by model.", ["model"])
BATCH_SIZE = Histogram("classforge_inference_batch_size", "Images per Predict call sent to the model server.",
                       buckets=(1, 2, 4, 8, 16, 32, 64))
PUBLISHED = Counter("classforge_inference_published_total", "Versions published, by model and outcome.",
                    ["model", "outcome"])


def model_label(model: str) -> str:
    """The `model` label: the name, or "(invalid)" for a name that is not a model name at all (a URL path
    segment can be anything; it must not become a series of its own)."""
    return model if MODEL_NAME.match(model or "") else "(invalid)"


def count_rejected(model: str, code: str, protocol: str) -> None:
    """A request a protocol layer refused before it reached the classifier (malformed JSON, invalid base64,
    a wrong v2 datatype …): counted like the classifier's own failures."""
    REQUESTS.labels(model_label(model), "", code, protocol).inc()
    ERRORS.labels(code, protocol).inc()
