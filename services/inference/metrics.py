"""Metrics of the inference service (gRPC-level counters come from the shared interceptor)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("classforge_inference_requests_total",
                   "Images classified, by model, answering version and status code.", ["model", "version", "code"])
LATENCY = Histogram("classforge_inference_request_duration_seconds",
                    "Time to classify one image (Predict included), by model and answering version.",
                    ["model", "version"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
ERRORS = Counter("classforge_inference_errors_total", "Failed classifications, by status code.", ["code"])
IMAGE_BYTES = Counter("classforge_inference_image_bytes_total", "Bytes of images received, by model.", ["model"])
BATCH_SIZE = Histogram("classforge_inference_batch_size", "Images per Predict call sent to the model server.",
                       buckets=(1, 2, 4, 8, 16, 32, 64))
PUBLISHED = Counter("classforge_inference_published_total", "Versions published, by model and outcome.",
                    ["model", "outcome"])
