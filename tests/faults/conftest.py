"""The fault suite's platform: every service its own process against the real Kafka, MinIO and
Prometheus that deploy/local starts, on a topic and a bucket of its own, with short heartbeats and
deadlines so that each case ends within minutes. Faults are made with the project's own scripts
(`deploy/local/minio.sh down|up`, `deploy/local/kafka.sh down|up`) and with `kill -9`.

Each case records how the job ended and how long that took after the fault; the table is printed
at the end of the run (and written to $CLASSFORGE_FAULT_REPORT as JSON when that is set)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from kafka import KafkaProducer

from classforge.v1 import common_pb2
from classforge.v1 import jobs_service_pb2 as jobs_pb
from classforge.v1 import jobs_service_pb2_grpc as jobs_grpc
from services.common.grpc_server import wait_until_serving
from services.common.settings import DEFAULT_PORTS
from services.common.storage.minio import MinioObjectStore
from services.demo_data import load_digits, write_image_folders
from tests.conftest import REPO_ROOT, ServiceProcess

PIPELINE = ("model_server", "jobs", "ingest", "tfrecords", "trainer", "evaluator", "inference")
Status = common_pb2.JobStatus
Stage = common_pb2.JobStage
TERMINAL = {Status.JOB_STATUS_SUCCEEDED, Status.JOB_STATUS_FAILED, Status.JOB_STATUS_CANCELLED}

RESULTS: list[dict] = []


@dataclass
class Ended:
    job: jobs_pb.Job
    seconds: float  # from the fault to the terminal state


class Platform:
    """The pipeline's seven processes plus the helpers a fault case needs."""

    def __init__(self, infra: dict[str, str], root: Path, **env: str):
        images, labels, names = load_digits()
        self.data = root / "digits"
        write_image_folders(images, labels, names, self.data, per_class=120)
        self.root = root
        self.bucket = f"faults-{uuid.uuid4().hex[:8]}"
        self.topic = f"classforge.faults.{uuid.uuid4().hex[:8]}"
        self.serving = root / "serving"
        self.serving.mkdir()
        self.env = {**infra, "CLASSFORGE_S3_BUCKET": self.bucket, "CLASSFORGE_KAFKA_TOPIC": self.topic,
                    "CLASSFORGE_GRACE_SECONDS": "5", "CLASSFORGE_MODEL_BASE_PATH": str(self.serving),
                    "CLASSFORGE_MODEL_POLL_SECONDS": "0.3", "CLASSFORGE_TRAINER_PROGRESS_SECONDS": "1",
                    "CLASSFORGE_TRAINER_WORK_DIR": str(root / "trainer"),
                    "CLASSFORGE_EVALUATOR_WORK_DIR": str(root / "evaluator"),
                    "CLASSFORGE_TFRECORDS_SCRATCH_DIR": str(root / "tfrecords"),
                    "CLASSFORGE_HEARTBEAT_SECONDS": "2", "CLASSFORGE_JOBS_WATCHDOG_SECONDS": "1",
                    "CLASSFORGE_JOBS_STAGE_DEADLINE_SECONDS": "90", "CLASSFORGE_JOBS_CANCEL_GRACE_SECONDS": "60",
                    "CLASSFORGE_OUTAGE_WINDOW_SECONDS": "150",
                    "CLASSFORGE_INGEST_LOCAL_ROOTS": str(self.data), **env}
        self.services: dict[str, ServiceProcess] = {}
        self.logs = root / "logs"
        self.logs.mkdir()
        for name in PIPELINE:
            self.start(name)
        for name in PIPELINE:
            self.wait_serving(name)
        self.jobs = jobs_grpc.JobsServiceStub(grpc.insecure_channel(f"127.0.0.1:{DEFAULT_PORTS['jobs'][0]}"))
        self.store = MinioObjectStore(infra["CLASSFORGE_S3_ENDPOINT"], infra["CLASSFORGE_S3_ACCESS_KEY"],
                                      infra["CLASSFORGE_S3_SECRET_KEY"], self.bucket)

    # ---------------------------------------------------------------- processes

    def start(self, name: str) -> ServiceProcess:
        log_dir = self.logs / f"{name}-{len([n for n in self.services if n.startswith(name)])}"
        log_dir.mkdir(exist_ok=True)
        self.services[name] = ServiceProcess(name, self.env, log_dir)
        return self.services[name]

    def wait_serving(self, name: str, timeout: float = 240) -> None:
        port = DEFAULT_PORTS["model-server" if name == "model_server" else name][0]
        try:
            wait_until_serving(grpc.insecure_channel(f"127.0.0.1:{port}"), timeout=timeout)
        except TimeoutError:
            pytest.fail(f"{name} never became SERVING:\n{self.services[name].log()[-4000:]}")

    def kill9(self, name: str) -> None:
        service = self.services[name]
        service.proc.kill()
        service.proc.wait()

    def restart(self, name: str) -> None:
        self.start(name)
        self.wait_serving(name)

    def stop(self) -> None:
        for service in self.services.values():
            service.terminate()

    def logs_tail(self, chars: int = 2500) -> str:
        return "\n".join(f"--- {n}\n{s.log()[-chars:]}" for n, s in self.services.items())

    # ---------------------------------------------------------------- jobs

    def spec(self, name: str, epochs: int = 3, deploy: bool = True) -> common_pb2.JobSpec:
        return common_pb2.JobSpec(
            display_name=name, source=common_pb2.DataSource(local_path=str(self.data)),
            dataset=common_pb2.DatasetOptions(val_fraction=0.15, test_fraction=0.15, seed=5),
            training=common_pb2.TrainingConfig(input_size=32, batch_size=32, backbone=common_pb2.BACKBONE_SMALL_CNN,
                                               width_multiplier=0.5,
                                               full_stage=common_pb2.TrainingStage(epochs=epochs)),
            gates=common_pb2.EvaluationGates(min_accuracy=0.2),
            deploy=common_pb2.DeployOptions(deploy=deploy, model_name=name.replace("_", "-")))

    def submit(self, spec: common_pb2.JobSpec) -> str:
        return self.jobs.SubmitJob(jobs_pb.SubmitJobRequest(spec=spec), timeout=60).job_id

    def get(self, job_id: str) -> jobs_pb.Job:
        return self.jobs.GetJob(jobs_pb.GetJobRequest(job_id=job_id), timeout=30).job

    def cancel(self, job_id: str) -> jobs_pb.Job:
        return self.jobs.CancelJob(jobs_pb.CancelJobRequest(job_id=job_id, reason="fault suite"), timeout=30).job

    def wait_stage(self, job_id: str, stage: int, timeout: float = 300, training_progress: bool = False,
                   started: bool = False) -> jobs_pb.Job:
        """Polls until the job is in `stage` (or later); with `started`, until the stage has said it
        works on the job (status RUNNING: its first heartbeat); with training_progress, until a step
        was trained."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(job_id)
            if job.status in TERMINAL:
                pytest.fail(f"job ended ({Status.Name(job.status)}: {job.error}) before reaching "
                            f"{Stage.Name(stage)}\n{self.logs_tail()}")
            if (job.stage >= stage and (not training_progress or job.progress.step > 0)
                    and (not started or job.status == Status.JOB_STATUS_RUNNING)):
                return job
            time.sleep(0.2)
        pytest.fail(f"job never reached {Stage.Name(stage)}\n{self.logs_tail()}")

    def wait_terminal(self, job_id: str, since: float, timeout: float = 600) -> Ended:
        """Waits (polling GetJob, retrying while the jobs service itself is down) for the end."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                job = self.get(job_id)
            except grpc.RpcError:
                job = None
            if job is not None and job.status in TERMINAL:
                return Ended(job, time.monotonic() - since)
            time.sleep(0.5)
        pytest.fail(f"job {job_id} did not end within {timeout}s\n{self.logs_tail()}")

    def events(self, job_id: str) -> list[str]:
        replies = self.jobs.WatchJob(jobs_pb.WatchJobRequest(job_id=job_id), timeout=60)
        return [reply.event.WhichOneof("payload") for reply in replies]

    def versions(self, model_name: str) -> list[int]:
        folder = self.serving / model_name
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []

    def orphans(self, job: jobs_pb.Job) -> list[str]:
        """Artefact folders of the job written without their completion marker (manifest last)."""
        found = []
        folders = {f"datasets/{job.dataset.dataset_id or 'ds-' + job.job_id}/": "manifest.json",
                   f"reports/{job.job_id}/": "evaluation.json"}
        if job.records_uri:
            folders[self.store.key_from_uri(job.records_uri.rstrip("/")) + "/"] = "manifest.json"
        for prefix, marker in folders.items():
            keys = [info.key for info in self.store.list(prefix)]
            if keys and prefix + marker not in keys:
                found.append(f"{prefix} ({len(keys)} objects, no {marker})")
        model_keys = [info.key for info in self.store.list(f"models/{job.job_id}/")]
        if any("/saved_model/" in k for k in model_keys) and f"models/{job.job_id}/manifest.json" not in model_keys:
            found.append(f"models/{job.job_id}/ (a SavedModel without manifest.json)")
        return found

    def publish_raw(self, job_id: str, value: bytes) -> None:
        producer = KafkaProducer(bootstrap_servers=self.env["CLASSFORGE_KAFKA_BOOTSTRAP"])
        producer.send(self.topic, key=job_id.encode(), value=value).get(timeout=30)
        producer.close()


def infra_script(component: str, action: str) -> None:
    """deploy/local/<component>.sh down|up: the same scripts `make infra-up` uses."""
    done = subprocess.run([str(REPO_ROOT / "deploy" / "local" / f"{component}.sh"), action],
                          capture_output=True, text=True, timeout=300)
    if done.returncode:
        pytest.fail(f"deploy/local/{component}.sh {action} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")


def record(case: str, expected: int, ended: Ended, stage_at_fault: int, note: str = "") -> None:
    RESULTS.append({"case": case, "expected": Status.Name(expected).removeprefix("JOB_STATUS_"),
                    "ended": Status.Name(ended.job.status).removeprefix("JOB_STATUS_"),
                    "stage_at_fault": Stage.Name(stage_at_fault).removeprefix("JOB_STAGE_"),
                    "seconds_to_end": round(ended.seconds, 1), "error": ended.job.error[:160], "note": note})


@pytest.fixture(scope="module")
def platform(infra_addresses, tmp_path_factory):
    platform = Platform(infra_addresses, tmp_path_factory.mktemp("faults"))
    yield platform
    platform.stop()


@pytest.fixture(autouse=True)
def infra_restored():
    """Whatever a case did, MinIO and Kafka are up again for the next one."""
    yield
    for component in ("minio", "kafka"):
        infra_script(component, "up")


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    terminalreporter.section("fault suite: how each job ended")
    header = f"{'case':<44} {'expected':<10} {'ended':<10} {'stage at fault':<15} {'s to end':>8}"
    terminalreporter.write_line(header)
    for r in RESULTS:
        terminalreporter.write_line(f"{r['case']:<44} {r['expected']:<10} {r['ended']:<10} "
                                    f"{r['stage_at_fault']:<15} {r['seconds_to_end']:>8}")
    path = os.environ.get("CLASSFORGE_FAULT_REPORT")
    if path:
        Path(path).write_text(json.dumps(RESULTS, indent=2))
