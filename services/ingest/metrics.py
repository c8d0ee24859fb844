"""Prometheus metrics of the ingest service (shared ones live in services.common.metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

IMAGES = Counter(
    "classforge_ingest_images_total",
    "Files ingest validated, by outcome: valid, or the reject reason code (corrupt, not-an-image, …).",
    ["outcome"],
)
DATASETS = Counter(
    "classforge_ingest_datasets_total",
    "Datasets ingest was asked for, by result: prepared (written now), reused (already complete), "
    "failed (the data or the options did not allow one).",
    ["result"],
)
PREPARE_SECONDS = Histogram(
    "classforge_ingest_prepare_duration_seconds",
    "Time to prepare one dataset: collect, validate, de-duplicate, split, balance and write.",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
