"""Importing a service's domain loads no infrastructure client (issue #14, "Independent services").

Domains code against `EventBus` and `ObjectStore`; only the composition roots choose Kafka and MinIO
(`services.common.events.kafka`, `services.common.storage.minio`), so a domain, its tests and the
embedded mode never load kafka-python or the MinIO client. TensorFlow is loaded only by the services
whose work is TensorFlow at heart. Each import runs in a fresh interpreter: this test process has
loaded everything long ago.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("kafka", "minio", "tensorflow")
# Their domains import the training loop / the model loader, which use TensorFlow at module level.
NEEDS_TENSORFLOW = {"services.trainer.domain", "services.evaluator.domain"}

DOMAINS = sorted(f"services.{path.parent.name}.domain" for path in (ROOT / "services").glob("*/domain.py"))
# Embedded mode runs every service on the in-process bus and a local store: no clients either.
LIGHT_COMMON = ["services.common.events", "services.common.storage", "services.common.runtime", "services.embedded"]
ADAPTERS = ["services.common.events.kafka", "services.common.storage.minio"]


# What counts as "loaded": the package, except for TensorFlow, where the runtime (tensorflow.python) is
# what costs seconds and memory. The inference client imports only TensorFlow's protobuf modules
# (tensorflow.core.*_pb2, services/inference/tfs_api.py), which its image carries without the runtime.
LOADED = {"kafka": "kafka", "minio": "minio", "tensorflow": "tensorflow.python"}


def _probe(module: str) -> subprocess.Popen:
    code = (f"import json, sys, {module}; "
            f"print(json.dumps(sorted(name for name, mod in {LOADED!r}.items() if mod in sys.modules)))")
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def heavy_modules_loaded_by() -> dict[str, set[str]]:
    """For each module checked: which of HEAVY importing it loads. The interpreters run side by side
    (TensorFlow alone takes seconds to load)."""
    probes = {module: _probe(module) for module in DOMAINS + LIGHT_COMMON + ADAPTERS}
    loaded = {}
    for module, probe in probes.items():
        out, err = probe.communicate(timeout=300)
        assert probe.returncode == 0, f"importing {module} failed:\n{err}"
        loaded[module] = set(json.loads(out.strip().splitlines()[-1]))
    return loaded


def test_every_service_with_a_domain_is_checked():
    assert {"services.jobs.domain", "services.ingest.domain", "services.tfrecords.domain"} <= set(DOMAINS)


@pytest.mark.parametrize("module", DOMAINS + LIGHT_COMMON)
def test_importing_loads_no_kafka_no_minio_and_tensorflow_only_where_needed(module, heavy_modules_loaded_by):
    allowed = {"tensorflow"} if module in NEEDS_TENSORFLOW else set()
    assert heavy_modules_loaded_by[module] - allowed == set()


def test_the_adapters_still_load_their_clients(heavy_modules_loaded_by):
    """The other side of the rule: the adapter modules are where the clients are (a sanity check of
    the probe above, which would also pass if it never saw anything)."""
    assert heavy_modules_loaded_by["services.common.events.kafka"] == {"kafka"}
    assert heavy_modules_loaded_by["services.common.storage.minio"] == {"minio"}
