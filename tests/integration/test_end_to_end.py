"""The distributed path end to end: every service its own process against the real Kafka, MinIO
and Prometheus; a job submitted over gRPC goes through every stage to a deployed model, which then
answers Classify through the inference service with the evaluator's view of the same image."""

import json
import uuid

import grpc
import pytest

from classforge.v1 import common_pb2, inference_service_pb2, inference_service_pb2_grpc
from classforge.v1 import jobs_service_pb2 as jobs_pb
from classforge.v1 import jobs_service_pb2_grpc as jobs_grpc
from services.common.grpc_server import wait_until_serving
from services.common.settings import DEFAULT_PORTS
from services.common.storage.minio import MinioObjectStore
from services.demo_data import load_digits, write_image_folders

pytestmark = pytest.mark.integration

PIPELINE = ("jobs", "ingest", "tfrecords", "trainer", "evaluator", "inference")


def start_pipeline(infra, start_service, tmp_path) -> tuple[dict, dict, str, object]:
    """Writes 600 digits as label folders and starts every service (and the model server) as its
    own process on its default ports; returns the processes, their environment, the bucket, the data."""
    images, labels, names = load_digits()
    data = tmp_path / "digits"
    write_image_folders(images, labels, names, data, per_class=60)
    bucket = f"it-e2e-{uuid.uuid4().hex[:8]}"
    serving = tmp_path / "serving"
    serving.mkdir()
    common = {**infra, "CLASSFORGE_S3_BUCKET": bucket, "CLASSFORGE_GRACE_SECONDS": "5",
              "CLASSFORGE_MODEL_BASE_PATH": str(serving), "CLASSFORGE_MODEL_POLL_SECONDS": "0.3",
              "CLASSFORGE_TRAINER_WORK_DIR": str(tmp_path / "trainer"),
              "CLASSFORGE_EVALUATOR_WORK_DIR": str(tmp_path / "evaluator"),
              "CLASSFORGE_TFRECORDS_SCRATCH_DIR": str(tmp_path / "tfrecords"),
              "CLASSFORGE_TRAINER_PROGRESS_SECONDS": "1", "CLASSFORGE_INGEST_LOCAL_ROOTS": str(data)}
    services = {"model_server": start_service("model_server", common)}
    for name in PIPELINE:
        services[name] = start_service(name, common)
    for name, service in services.items():
        wait_serving(name, service)
    return services, common, bucket, data


def wait_serving(name, service) -> None:
    port = DEFAULT_PORTS["model-server" if name == "model_server" else name][0]
    try:
        wait_until_serving(grpc.insecure_channel(f"127.0.0.1:{port}"), timeout=180)
    except TimeoutError:
        pytest.fail(f"{name} never became SERVING:\n{service.log()[-5000:]}")


def digits_spec(data, epochs: int, **deploy) -> common_pb2.JobSpec:
    return common_pb2.JobSpec(
        display_name="e2e digits",
        source=common_pb2.DataSource(local_path=str(data)),
        dataset=common_pb2.DatasetOptions(val_fraction=0.15, test_fraction=0.15, seed=5),
        training=common_pb2.TrainingConfig(input_size=32, batch_size=32, backbone=common_pb2.BACKBONE_SMALL_CNN,
                                           full_stage=common_pb2.TrainingStage(epochs=epochs)),
        gates=common_pb2.EvaluationGates(min_accuracy=0.2),
        deploy=common_pb2.DeployOptions(**deploy))


def until_training(jobs, job_id: str) -> list[str]:
    """Follows the job until its first training progress; returns the kinds seen."""
    seen = []
    for reply in jobs.WatchJob(jobs_pb.WatchJobRequest(job_id=job_id), timeout=300):
        seen.append(reply.event.WhichOneof("payload"))
        if seen[-1] == "training_progress":
            return seen
    raise AssertionError(f"job ended before training progressed: {seen}")


def test_job_runs_from_folder_to_served_model_across_processes(infra, prometheus, start_service, tmp_path):
    services, common, bucket, data = start_pipeline(infra, start_service, tmp_path)
    channel = grpc.insecure_channel(f"127.0.0.1:{DEFAULT_PORTS['jobs'][0]}")
    jobs = jobs_grpc.JobsServiceStub(channel)
    spec = digits_spec(data, epochs=3, deploy=True, model_name="digits")
    job_id = jobs.SubmitJob(jobs_pb.SubmitJobRequest(spec=spec), timeout=30).job_id

    seen = []
    for reply in jobs.WatchJob(jobs_pb.WatchJobRequest(job_id=job_id), timeout=600):
        seen.append(reply.event.WhichOneof("payload"))
    job = jobs.GetJob(jobs_pb.GetJobRequest(job_id=job_id), timeout=30).job
    logs = "\n".join(f"--- {n}\n{s.log()[-3000:]}" for n, s in services.items())
    assert job.status == common_pb2.JOB_STATUS_SUCCEEDED, f"{job}\nevents {seen}\n{logs}"
    for kind in ("job_submitted", "dataset_prepared", "records_built", "training_progress",
                 "training_completed", "evaluation_completed", "model_deployed"):
        assert kind in seen, f"{kind} missing from {seen}"
    assert job.blessed and job.model.model_name == "digits" and job.model.version >= 1

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
    inference = inference_service_pb2_grpc.InferenceServiceStub(
        grpc.insecure_channel(f"127.0.0.1:{DEFAULT_PORTS['inference'][0]}"))
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
    services, common, bucket, data = start_pipeline(infra, start_service, tmp_path)
    jobs = jobs_grpc.JobsServiceStub(grpc.insecure_channel(f"127.0.0.1:{DEFAULT_PORTS['jobs'][0]}"))
    store = MinioObjectStore(infra["CLASSFORGE_S3_ENDPOINT"], infra["CLASSFORGE_S3_ACCESS_KEY"],
                             infra["CLASSFORGE_S3_SECRET_KEY"], bucket)

    # 1. Cancel while training: the job ends CANCELLED and the trainer leaves a final checkpoint.
    cancelled = jobs.SubmitJob(jobs_pb.SubmitJobRequest(spec=digits_spec(data, epochs=200)), timeout=30).job_id
    until_training(jobs, cancelled)
    jobs.CancelJob(jobs_pb.CancelJobRequest(job_id=cancelled, reason="e2e"), timeout=30)
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
    restarted = start_service("trainer", common)
    wait_serving("trainer", restarted)
    for _ in jobs.WatchJob(jobs_pb.WatchJobRequest(job_id=survivor), timeout=600):
        pass
    job = jobs.GetJob(jobs_pb.GetJobRequest(job_id=survivor), timeout=30).job
    assert job.status == common_pb2.JOB_STATUS_SUCCEEDED, f"{job}\n{restarted.log()[-3000:]}"
    assert store.exists(f"models/{survivor}/manifest.json")
