"""Metrics of the model server stand-in (its gRPC calls are counted by the shared interceptor)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

AVAILABLE_VERSIONS = Gauge("classforge_model_server_available_versions",
                           "Versions of a model loaded and AVAILABLE.", ["model"])
LOADS = Counter("classforge_model_server_loads_total", "Version loads, by model and outcome.", ["model", "outcome"])
LOAD_SECONDS = Histogram("classforge_model_server_load_seconds", "Time to load one SavedModel version.",
                         buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
