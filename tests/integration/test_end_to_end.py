"""The distributed path end to end: every service its own process against the real Kafka, MinIO
and Prometheus; a job submitted over gRPC goes through every stage to a deployed model, which then
answers Classify through the inference service with the evaluator's view of the same image.

Security is on, as in production: every gRPC server serves TLS with a certificate of its own from a CA made
here, callers present bearer tokens from a tokens file (viewer, two submitters, admin), and the model server
asks for client certificates (mutual TLS) and knows the inference service by its certificate. The clients
below are plain grpc channels with standard credentials, as any user's would be."""

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme
import yaml

from classforge.v1 import common_pb2, events_pb2, inference_service_pb2, inference_service_pb2_grpc
from classforge.v1 import jobs_service_pb2 as jobs_pb
from classforge.v1 import jobs_service_pb2_grpc as jobs_grpc
from services.common.auth import token_sha256
from services.common.grpc_server import wait_until_serving
from services.common.settings import DEFAULT_PORTS
from services.common.storage.minio import MinioObjectStore
from services.demo_data import load_digits, write_image_folders

pytestmark = pytest.mark.integration

PIPELINE = ("jobs", "ingest", "tfrecords", "trainer", "evaluator", "inference")
TERMINAL = {common_pb2.JOB_STATUS_SUCCEEDED, common_pb2.JOB_STATUS_FAILED, common_pb2.JOB_STATUS_CANCELLED}
# subject -> role; each gets a random token
USERS = {"ada": "viewer", "alice": "submitter", "bob": "submitter", "root": "admin"}


@dataclass
class Security:
    """The test's CA, a certificate per service and a token per user, as files the services read."""

    root: Path
    ca: trustme.CA
    tokens: dict[str, str]  # subject -> bearer token

    @classmethod
    def create(cls, root: Path) -> "Security":
        root.mkdir()
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(root / "ca.pem"))
        tokens = {subject: uuid.uuid4().hex + uuid.uuid4().hex for subject in USERS}
        # Only the tokens' SHA-256 digests are on the servers' side.
        (root / "tokens.yaml").write_text(yaml.safe_dump(
            [{"subject": s, "role": USERS[s], "token_sha256": token_sha256(t)} for s, t in tokens.items()]))
        # The model server knows the inference service by its certificate; publishing reloads its config: admin.
        (root / "identities.yaml").write_text(yaml.safe_dump({"inference": "admin"}))
        return cls(root, ca, tokens)

    def env(self, service: str) -> dict[str, str]:
        """TLS and auth settings of one service, with a certificate issued to it (CN = its name)."""
        cert = self.ca.issue_cert("127.0.0.1", "localhost", common_name=service)
        cert.cert_chain_pems[0].write_to_path(str(self.root / f"{service}.pem"))
        cert.private_key_pem.write_to_path(str(self.root / f"{service}.key"))
        env = {"CLASSFORGE_TLS_CERT": str(self.root / f"{service}.pem"),
               "CLASSFORGE_TLS_KEY": str(self.root / f"{service}.key"),
               "CLASSFORGE_TLS_CA": str(self.root / "ca.pem"),
               "CLASSFORGE_AUTH_TOKENS_FILE": str(self.root / "tokens.yaml")}
        if service == "model_server":
            env |= {"CLASSFORGE_TLS_CLIENT_AUTH": "require",
                    "CLASSFORGE_AUTH_MTLS_IDENTITIES": str(self.root / "identities.yaml")}
        return env

    def channel(self, service: str, user: str | None = None) -> grpc.Channel:
        """A TLS channel to `service` that trusts the test CA, sending `user`'s token (none when None). The
        model server requires a client certificate: the test presents one of its own (CN e2e-test)."""
        client_cert = {}
        if service == "model-server":
            cert = self.ca.issue_cert("e2e-test", common_name="e2e-test")
            client_cert = {"private_key": cert.private_key_pem.bytes(),
                           "certificate_chain": cert.cert_chain_pems[0].bytes()}
        credentials = grpc.ssl_channel_credentials(root_certificates=(self.root / "ca.pem").read_bytes(), **client_cert)
        if user is not None:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(self.tokens[user]))
        return grpc.secure_channel(f"127.0.0.1:{DEFAULT_PORTS[service][0]}", credentials)


def start_pipeline(infra, start_service, tmp_path) -> tuple[dict, dict, str, object, Security]:
    """Writes 600 digits as label folders and starts every service (and the model server) as its
    own process on its default ports, with TLS and tokens; returns the processes, their common
    environment, the bucket, the data and the security material."""
    images, labels, names = load_digits()
    data = tmp_path / "digits"
    write_image_folders(images, labels, names, data, per_class=60)
    bucket = f"it-e2e-{uuid.uuid4().hex[:8]}"
    serving = tmp_path / "serving"
    serving.mkdir()
    security = Security.create(tmp_path / "security")
    insecure = {"CLASSFORGE_GRPC_PLAINTEXT", "CLASSFORGE_AUTH_DISABLED"}  # what other integration tests switch on
    common = {**{k: v for k, v in infra.items() if k not in insecure},
              "CLASSFORGE_S3_BUCKET": bucket, "CLASSFORGE_GRACE_SECONDS": "5",
              "CLASSFORGE_MODEL_BASE_PATH": str(serving), "CLASSFORGE_MODEL_POLL_SECONDS": "0.3",
              "CLASSFORGE_TRAINER_WORK_DIR": str(tmp_path / "trainer"),
              "CLASSFORGE_EVALUATOR_WORK_DIR": str(tmp_path / "evaluator"),
              "CLASSFORGE_TFRECORDS_SCRATCH_DIR": str(tmp_path / "tfrecords"),
              "CLASSFORGE_TRAINER_PROGRESS_SECONDS": "1", "CLASSFORGE_INGEST_LOCAL_ROOTS": str(data)}
    services = {"model_server": start_service("model_server", common | security.env("model_server"))}
    for name in PIPELINE:
        services[name] = start_service(name, common | security.env(name))
    for name, service in services.items():
        wait_serving(name, service, security)
    return services, common, bucket, data, security


def wait_serving(name, service, security: Security) -> None:
    try:  # grpc.health.v1 is open: TLS without a token
        wait_until_serving(security.channel("model-server" if name == "model_server" else name), timeout=180)
    except TimeoutError:
        pytest.fail(f"{name} never became SERVING:\n{service.log()[-5000:]}")


def status_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code()


def digits_spec(data, epochs: int, **deploy) -> common_pb2.JobSpec:
    return common_pb2.JobSpec(
        display_name="e2e digits",
        source=common_pb2.DataSource(local_path=str(data)),
        dataset=common_pb2.DatasetOptions(val_fraction=0.15, test_fraction=0.15, seed=5),
        training=common_pb2.TrainingConfig(input_size=32, batch_size=32, backbone=common_pb2.BACKBONE_SMALL_CNN,
                                           full_stage=common_pb2.TrainingStage(epochs=epochs)),
        gates=common_pb2.EvaluationGates(min_accuracy=0.2),
        deploy=common_pb2.DeployOptions(**deploy))


def follow(jobs, job_id: str, timeout: float = 600) -> list[events_pb2.Event]:
    """Every event of the job until it ends, as a client that outlives a broken stream would: a WatchJob
    stream that breaks (or ends) before the job does is opened again, and events already seen are skipped."""
    deadline, seen, ids = time.monotonic() + timeout, [], set()
    while True:
        try:
            for reply in jobs.WatchJob(jobs_pb.WatchJobRequest(job_id=job_id), timeout=deadline - time.monotonic()):
                if reply.event.event_id not in ids:
                    ids.add(reply.event.event_id)
                    seen.append(reply.event)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
        if jobs.GetJob(jobs_pb.GetJobRequest(job_id=job_id), timeout=30).job.status in TERMINAL:
            return seen
        assert time.monotonic() < deadline, f"job {job_id} did not end within {timeout:.0f}s"
        time.sleep(1)


def until_training(jobs, job_id: str) -> list[str]:
    """Follows the job until its first training progress; returns the kinds seen."""
    seen = []
    for reply in jobs.WatchJob(jobs_pb.WatchJobRequest(job_id=job_id), timeout=300):
        seen.append(reply.event.WhichOneof("payload"))
        if seen[-1] == "training_progress":
            return seen
    raise AssertionError(f"job ended before training progressed: {seen}")


def test_job_runs_from_folder_to_served_model_across_processes(infra, prometheus, start_service, tmp_path):
    services, common, bucket, data, security = start_pipeline(infra, start_service, tmp_path)
    spec = digits_spec(data, epochs=3, deploy=True, model_name="digits")
    submit = jobs_pb.SubmitJobRequest(spec=spec)

    # Who may not: a plaintext client, a TLS client without a token or with an unknown one, a viewer submitting.
    # A plaintext client never gets an answer: its connection fails (UNAVAILABLE), or, when gRPC is still
    # reconnecting when the deadline comes, the deadline passes first.
    plaintext = jobs_grpc.JobsServiceStub(grpc.insecure_channel(f"127.0.0.1:{DEFAULT_PORTS['jobs'][0]}"))
    refused = status_of(lambda: plaintext.ListJobs(jobs_pb.ListJobsRequest(), timeout=10))
    assert refused in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), refused
    anonymous = jobs_grpc.JobsServiceStub(security.channel("jobs"))
    assert status_of(lambda: anonymous.SubmitJob(submit, timeout=30)) == grpc.StatusCode.UNAUTHENTICATED
    viewer = jobs_grpc.JobsServiceStub(security.channel("jobs", "ada"))
    assert status_of(lambda: viewer.SubmitJob(submit, timeout=30)) == grpc.StatusCode.PERMISSION_DENIED

    channel = security.channel("jobs", "alice")
    jobs = jobs_grpc.JobsServiceStub(channel)
    job_id = jobs.SubmitJob(submit, timeout=30).job_id

    seen = [event.WhichOneof("payload") for event in follow(jobs, job_id)]
    job = jobs.GetJob(jobs_pb.GetJobRequest(job_id=job_id), timeout=30).job
    logs = "\n".join(f"--- {n}\n{s.log()[-3000:]}" for n, s in services.items())
    assert job.status == common_pb2.JOB_STATUS_SUCCEEDED, f"{job}\nevents {seen}\n{logs}"
    for kind in ("job_submitted", "dataset_prepared", "records_built", "training_progress",
                 "training_completed", "evaluation_completed", "model_deployed"):
        assert kind in seen, f"{kind} missing from {seen}"
    assert job.blessed and job.model.model_name == "digits" and job.model.version >= 1
    assert job.owner == "alice"
    assert viewer.GetJob(jobs_pb.GetJobRequest(job_id=job_id), timeout=30).job.owner == "alice"

    # The served model gives the evaluator's answer for an image of the evaluation split.
    store = MinioObjectStore(infra["CLASSFORGE_S3_ENDPOINT"], infra["CLASSFORGE_S3_ACCESS_KEY"],
                             infra["CLASSFORGE_S3_SECRET_KEY"], bucket)
    evaluation = json.loads(store.get_bytes(f"reports/{job_id}/evaluation.json"))
    task = evaluation["tasks"][0]
    assert task["examples"] > 0
    # The trainer exports model.keras beside the SavedModel: a trained model always gets Grad-CAMs.
    assert evaluation["cam_status"] == "ok" and task["cams"], evaluation["cam_status"]
    gallery_entry = task["gallery"][0]  # an evaluated image, its prediction and probability
    sha = gallery_entry["source_id"]  # the dataset stores each image by its content hash
    (stored,) = store.list(f"datasets/{job.dataset.dataset_id}/images/{sha[:2]}/{sha}")
    image = store.get_bytes(stored.key)
    inference = inference_service_pb2_grpc.InferenceServiceStub(security.channel("inference", "ada"))
    reply = inference.Classify(inference_service_pb2.ClassifyRequest(image=image, top_k=1, model_name="digits"),
                               timeout=30)
    top = reply.predictions[0].top[0]
    assert top.class_id == gallery_entry["predicted"]
    assert top.probability == pytest.approx(gallery_entry["probability"], abs=1e-4)

    # Prometheus scraped every service, and each stage's metrics moved.
    for name in (*PIPELINE, "model-server"):
        assert prometheus.wait_for_value(f'up{{job="{name}"}}', lambda v: v == 1, timeout=60) == 1, name
    for metric in ("classforge_ingest_datasets_total", "classforge_tfrecords_builds_total",
                   "classforge_trainer_runs_total", "classforge_evaluator_evaluations_total",
                   "classforge_inference_requests_total"):
        assert prometheus.wait_for_value(f"sum({metric})", lambda v: v >= 1, timeout=60) >= 1, metric
    channel.close()


def test_cancel_during_training_and_a_trainer_killed_mid_run(infra, start_service, tmp_path):
    services, common, bucket, data, security = start_pipeline(infra, start_service, tmp_path)
    jobs = jobs_grpc.JobsServiceStub(security.channel("jobs", "alice"))
    store = MinioObjectStore(infra["CLASSFORGE_S3_ENDPOINT"], infra["CLASSFORGE_S3_ACCESS_KEY"],
                             infra["CLASSFORGE_S3_SECRET_KEY"], bucket)

    # 1. Cancel while training: the job ends CANCELLED and the trainer leaves a final checkpoint.
    cancelled = jobs.SubmitJob(jobs_pb.SubmitJobRequest(spec=digits_spec(data, epochs=200)), timeout=30).job_id
    until_training(jobs, cancelled)
    # Only its owner or an admin may cancel it: bob, another submitter, is refused.
    bob = jobs_grpc.JobsServiceStub(security.channel("jobs", "bob"))
    cancel = jobs_pb.CancelJobRequest(job_id=cancelled, reason="e2e")
    assert status_of(lambda: bob.CancelJob(cancel, timeout=30)) == grpc.StatusCode.PERMISSION_DENIED
    jobs.CancelJob(cancel, timeout=30)
    events = [r.event for r in jobs.WatchJob(jobs_pb.WatchJobRequest(job_id=cancelled), timeout=120)]
    job = jobs.GetJob(jobs_pb.GetJobRequest(job_id=cancelled), timeout=30).job
    assert job.status == common_pb2.JOB_STATUS_CANCELLED, f"{job}\n{services['trainer'].log()[-3000:]}"
    (done,) = [e.job_cancelled for e in events if e.WhichOneof("payload") == "job_cancelled"]
    assert done.stage == common_pb2.JOB_STAGE_TRAINING and done.checkpoint_uri
    assert list(store.list(f"models/{cancelled}/checkpoints/")), "no checkpoint was written on cancel"

    # 2. kill -9 the trainer mid-run, start a new one: the job resumes from its checkpoint and completes.
    survivor = jobs.SubmitJob(jobs_pb.SubmitJobRequest(spec=digits_spec(data, epochs=6)), timeout=30).job_id
    until_training(jobs, survivor)
    services["trainer"].proc.kill()
    services["trainer"].proc.wait()
    restarted = start_service("trainer", common | security.env("trainer"))
    wait_serving("trainer", restarted, security)
    follow(jobs, survivor)
    job = jobs.GetJob(jobs_pb.GetJobRequest(job_id=survivor), timeout=30).job
    assert job.status == common_pb2.JOB_STATUS_SUCCEEDED, f"{job}\n{restarted.log()[-3000:]}"
    assert store.exists(f"models/{survivor}/manifest.json")
