"""`make bench`: runs every benchmark and prints one table. Timing lives here, never in tests."""

from __future__ import annotations

import importlib
import sys

from bench.table import machine, render

BENCHMARKS = ["bench.grpc_runtime", "bench.ingest", "bench.tfrecords", "bench.trainer", "bench.evaluator",
              "bench.inference"]


def main() -> int:
    rows = []
    print(f"before: {machine()}", file=sys.stderr, flush=True)
    for name in BENCHMARKS:
        print(f"running {name} …", file=sys.stderr, flush=True)
        rows.extend(importlib.import_module(name).run())
    print(render(rows))
    print(f"after: {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
