"""The evaluator's own Prometheus metrics (prefix classforge_evaluator_); the shared ones (gRPC
requests, readiness) come from services.common.metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVALUATIONS = Counter(
    "classforge_evaluator_evaluations_total",
    "Evaluations finished, by outcome (blessed, not_blessed, failed).",
    ["outcome"],
)
EVALUATION_SECONDS = Histogram(
    "classforge_evaluator_evaluation_duration_seconds",
    "Wall time of one evaluation: model and records download, inference, report, upload.",
    buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
EVALUATION_IMAGES_PER_SECOND = Gauge(
    "classforge_evaluator_images_per_second",
    "Inference throughput of the last evaluation's pass over its split.",
)
