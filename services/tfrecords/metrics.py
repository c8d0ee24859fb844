"""Prometheus metrics of the tfrecords service (prefix `classforge_tfrecords_`). Counted in the
process that runs the build (its worker processes only encode)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EXAMPLES_WRITTEN = Counter(
    "classforge_tfrecords_examples_written_total",
    "tf.train.Examples written to uploaded shards, by split.",
    ["split"],
)
BYTES_WRITTEN = Counter(
    "classforge_tfrecords_bytes_written_total",
    "Bytes of TFRecord shards uploaded, by split.",
    ["split"],
)
SHARDS_WRITTEN = Counter(
    "classforge_tfrecords_shards_written_total",
    "TFRecord shards uploaded, by split.",
    ["split"],
)
BUILDS = Counter(
    "classforge_tfrecords_builds_total",
    "Build requests by outcome: built, existing (manifest already there, nothing rebuilt), failed.",
    ["outcome"],
)
BUILD_DURATION = Histogram(
    "classforge_tfrecords_build_duration_seconds",
    "Wall time of builds that wrote records, from reading the dataset to writing the manifest.",
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)
