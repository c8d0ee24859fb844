"""The containerized stack (`make test-compose`, deploy/compose/test-stack.sh): every classforge service
in its own image, against Kafka, MinIO and Prometheus in containers, on loopback only.

The script brings the stack up and down; these tests only talk to it, through the published CLI and
gRPC APIs, like a user would: `classforge submit` + `classforge watch` a small digits job to SUCCEEDED,
classify one image through the containerized inference service, and read the stack's own Prometheus.
"""

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest

from classforge.v1 import common_pb2, inference_service_pb2, inference_service_pb2_grpc
from classforge.v1 import jobs_service_pb2 as jobs_pb
from classforge.v1 import jobs_service_pb2_grpc as jobs_grpc
from services.demo_data import load_digits, write_image_folders

pytestmark = [pytest.mark.integration, pytest.mark.compose]

DATA = Path(os.environ.get("CLASSFORGE_COMPOSE_DATA", ".build/compose-data"))
JOBS = "127.0.0.1:50051"
INFERENCE = "127.0.0.1:50056"
PROMETHEUS = "http://127.0.0.1:9090"
SERVICES = ("jobs", "ingest", "tfrecords", "trainer", "evaluator", "inference")
SPEC = """
display_name: compose digits
source: {local_path: /data/digits}
dataset: {val_fraction: 0.15, test_fraction: 0.15, seed: 5}
training:
  input_size: 32
  batch_size: 32
  backbone: BACKBONE_SMALL_CNN
  full_stage: {epochs: 3}
gates: {min_accuracy: 0.2}
deploy: {deploy: true, model_name: compose-digits}
"""


def classforge(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    # Plaintext, as the Compose test stack serves (CLASSFORGE_GRPC_PLAINTEXT=true there).
    return subprocess.run([sys.executable, "-m", "services.cli", "--plaintext", "--jobs", JOBS, *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Writes 600 digits into the folder the ingest container mounts at /data, submits with the CLI and
    watches to the end; returns the ended job."""
    images, labels, names = load_digits()
    write_image_folders(images, labels, names, DATA / "digits", per_class=60)
    spec = tmp_path_factory.mktemp("spec") / "spec.yaml"
    spec.write_text(SPEC)
    submitted = classforge("submit", str(spec), timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]
    watched = classforge("watch", job_id, "--no-progress")
    assert watched.returncode == 0, f"{watched.stdout[-3000:]}\n{watched.stderr[-3000:]}"
    stub = jobs_grpc.JobsServiceStub(grpc.insecure_channel(JOBS))
    return stub.GetJob(jobs_pb.GetJobRequest(job_id=job_id), timeout=30).job


def test_a_job_submitted_with_the_cli_succeeds_in_containers(job):
    assert common_pb2.JobStatus.Name(job.status) == "JOB_STATUS_SUCCEEDED", job
    assert job.model.version >= 1, job


def test_the_containerized_inference_service_classifies_an_image(job):
    _, _, names = load_digits()
    one = next((DATA / "digits").rglob("*.png"))
    stub = inference_service_pb2_grpc.InferenceServiceStub(grpc.insecure_channel(INFERENCE))
    deadline = time.monotonic() + 120
    while True:  # the served version becomes AVAILABLE a moment after the job ends
        try:
            reply = stub.Classify(inference_service_pb2.ClassifyRequest(
                model_name="compose-digits", image=one.read_bytes(), top_k=3), timeout=30)
            break
        except grpc.RpcError as exc:
            if time.monotonic() > deadline or exc.code() not in (grpc.StatusCode.UNAVAILABLE,
                                                                 grpc.StatusCode.NOT_FOUND):
                raise
            time.sleep(1)
    (task,) = reply.predictions
    assert len(task.top) == 3 and {score.label for score in task.top} <= set(names)
    assert reply.version == job.model.version


def test_the_stacks_prometheus_sees_every_classforge_service_up(job):
    query = urllib.parse.urlencode({"query": "up"})
    deadline = time.monotonic() + 60
    while True:
        with urllib.request.urlopen(f"{PROMETHEUS}/api/v1/query?{query}", timeout=10) as reply:
            result = json.load(reply)["data"]["result"]
        up = {r["metric"]["job"]: r["value"][1] for r in result}
        if all(up.get(s) == "1" for s in SERVICES) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert {s: up.get(s) for s in SERVICES} == {s: "1" for s in SERVICES}
