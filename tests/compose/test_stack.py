"""The containerized stack (`make test-compose`, deploy/compose/test-stack.sh): every classforge service
in its own image, against Kafka, MinIO and Prometheus in containers, on loopback only.

The script brings the stack up and down; these tests only talk to it, through the published CLI and
gRPC APIs, like a user would: `classforge submit` + `classforge watch` a small digits job to SUCCEEDED,
classify one image through the containerized inference service, and read the stack's own Prometheus.

Every gRPC call goes over TLS, verified with the stack's CA, with a bearer token (issue #16): the script
exports CLASSFORGE_TLS_CA and the operator's tokens from the secrets it generated (CLASSFORGE_TOKEN is the
submitter's; CLASSFORGE_TOKEN_VIEWER the viewer's). A call without a token, a viewer submitting and a
plaintext client are refused.
"""

import json
import os
import subprocess
import sys
import time
import urllib.error
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
REST = "127.0.0.1:8086"
PROMETHEUS = "http://127.0.0.1:9090"
SERVICES = ("jobs", "ingest", "tfrecords", "trainer", "evaluator", "inference")
CA = Path(os.environ.get("CLASSFORGE_TLS_CA", ".build/compose-secrets/ca/ca.crt"))


def token(name: str = "CLASSFORGE_TOKEN") -> str:
    value = os.environ.get(name, "")
    assert value, f"{name} is not set: run these tests with deploy/compose/test-stack.sh"
    return value


def tls_channel(address: str) -> grpc.Channel:
    """A TLS channel that trusts only the stack's CA (the server certificates name 127.0.0.1)."""
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=CA.read_bytes()))


def bearer(name: str = "CLASSFORGE_TOKEN") -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token(name)}")]


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
    """The CLI as a user runs it: the CA and CLASSFORGE_TOKEN from the environment."""
    env = {**os.environ, "CLASSFORGE_TLS_CA": str(CA.resolve()), "CLASSFORGE_TOKEN": token()}
    return subprocess.run([sys.executable, "-m", "services.cli", "--jobs", JOBS, *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


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
    stub = jobs_grpc.JobsServiceStub(tls_channel(JOBS))
    return stub.GetJob(jobs_pb.GetJobRequest(job_id=job_id), timeout=30, metadata=bearer()).job


def test_a_job_submitted_with_the_cli_succeeds_in_containers(job):
    assert common_pb2.JobStatus.Name(job.status) == "JOB_STATUS_SUCCEEDED", job
    assert job.model.version >= 1, job


def test_the_containerized_inference_service_classifies_an_image(job):
    _, _, names = load_digits()
    one = next((DATA / "digits").rglob("*.png"))
    stub = inference_service_pb2_grpc.InferenceServiceStub(tls_channel(INFERENCE))
    deadline = time.monotonic() + 120
    while True:  # the served version becomes AVAILABLE a moment after the job ends
        try:
            reply = stub.Classify(inference_service_pb2.ClassifyRequest(
                model_name="compose-digits", image=one.read_bytes(), top_k=3), timeout=30,
                metadata=bearer("CLASSFORGE_TOKEN_VIEWER"))  # classify is a viewer's right
            break
        except grpc.RpcError as exc:
            if time.monotonic() > deadline or exc.code() not in (grpc.StatusCode.UNAVAILABLE,
                                                                 grpc.StatusCode.NOT_FOUND):
                raise
            time.sleep(1)
    (task,) = reply.predictions
    assert len(task.top) == 3 and {score.label for score in task.top} <= set(names)
    assert reply.version == job.model.version


def test_the_rest_port_classifies_over_https_with_a_token_and_refuses_without_one(job):
    """REST (TF Serving-style :classify) on the inference service: HTTPS with the gRPC port's certificate,
    the same tokens and roles; 401 without a token."""
    import base64
    import ssl

    context = ssl.create_default_context(cafile=str(CA))
    one = next((DATA / "digits").rglob("*.png"))
    body = json.dumps({"instances": [{"b64": base64.b64encode(one.read_bytes()).decode()}]}).encode()
    url = f"https://{REST}/v1/models/compose-digits:classify"

    def post(headers: dict) -> tuple[int, dict]:
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request, timeout=30, context=context) as reply:
                return reply.status, json.load(reply)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    status, answer = post({"Authorization": f"Bearer {token('CLASSFORGE_TOKEN_VIEWER')}"})
    assert status == 200 and answer["results"], answer
    status, answer = post({})
    assert status == 401 and answer["code"] == "UNAUTHENTICATED", answer


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


def test_a_job_records_its_owner(job):
    """GetJob shows who submitted: the subject of the submitter's token in the generated tokens.yaml."""
    assert "operator-submitter" in str(job), job


def test_a_call_without_a_token_is_unauthenticated():
    jobs = jobs_grpc.JobsServiceStub(tls_channel(JOBS))
    with pytest.raises(grpc.RpcError) as refused:
        jobs.ListJobs(jobs_pb.ListJobsRequest(), timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    inference = inference_service_pb2_grpc.InferenceServiceStub(tls_channel(INFERENCE))
    with pytest.raises(grpc.RpcError) as refused:
        inference.ListModels(inference_service_pb2.ListModelsRequest(), timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as refused:  # a token that is not in tokens.yaml
        jobs.ListJobs(jobs_pb.ListJobsRequest(), timeout=30, metadata=[("authorization", "Bearer not-a-token")])
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_wrong_role_is_permission_denied():
    jobs = jobs_grpc.JobsServiceStub(tls_channel(JOBS))
    jobs.ListJobs(jobs_pb.ListJobsRequest(), timeout=30, metadata=bearer("CLASSFORGE_TOKEN_VIEWER"))  # may list
    with pytest.raises(grpc.RpcError) as refused:  # viewers may look, not submit
        jobs.SubmitJob(jobs_pb.SubmitJobRequest(), timeout=30, metadata=bearer("CLASSFORGE_TOKEN_VIEWER"))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    inference = inference_service_pb2_grpc.InferenceServiceStub(tls_channel(INFERENCE))
    with pytest.raises(grpc.RpcError) as refused:  # only an admin rolls back
        inference.Rollback(inference_service_pb2.RollbackRequest(model_name="compose-digits"), timeout=30,
                           metadata=bearer())
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("address", [JOBS, INFERENCE])
def test_a_plaintext_client_is_refused(address):
    """The public ports speak TLS only: a plaintext client (even with a valid token) never gets an answer."""
    stub = jobs_grpc.JobsServiceStub(grpc.insecure_channel(address))
    with pytest.raises(grpc.RpcError) as refused:
        stub.ListJobs(jobs_pb.ListJobsRequest(), timeout=10, metadata=bearer())
    # its connection fails (UNAVAILABLE), or the deadline passes while gRPC is still reconnecting
    assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), refused.value


def test_a_client_that_does_not_trust_the_stacks_ca_is_refused():
    """The default trust store (the system's CAs) does not know the stack's private CA: the handshake fails."""
    stub = jobs_grpc.JobsServiceStub(grpc.secure_channel(JOBS, grpc.ssl_channel_credentials()))
    with pytest.raises(grpc.RpcError) as refused:
        stub.ListJobs(jobs_pb.ListJobsRequest(), timeout=10, metadata=bearer())
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
