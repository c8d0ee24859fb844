"""Embedded mode: `classforge run DATA --out DIR` runs every service in one process.

The same service classes, events and outputs as the distributed deployment: each service's own
`build(context)` wires its servicer and its event subscriptions, but the context holds an
in-process event bus and a local-directory object store instead of Kafka and MinIO, one gRPC
server hosts every servicer, and the model-server stand-in runs on a thread. The run itself is a
client of that server: SubmitJob, then WatchJob until the job ends, exactly as `classforge submit`
and `classforge watch` talk to a deployment.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
from pathlib import Path

import grpc

from classforge.v1 import common_pb2, inference_service_pb2, inference_service_pb2_grpc
from classforge.v1 import jobs_service_pb2 as jobs_pb
from classforge.v1 import jobs_service_pb2_grpc as jobs_grpc
from services.common.events import InProcessEventBus
from services.common.grpc_server import GrpcServer, wait_until_serving
from services.common.runtime import ServiceContext
from services.common.settings import ServiceSettings
from services.common.storage import LocalObjectStore

log = logging.getLogger("classforge.embedded")

# service name -> (module with build(), settings class "module:Class")
SERVICES = {
    "jobs": ("services.jobs.main", "services.jobs.main:JobsSettings"),
    "ingest": ("services.ingest.main", "services.ingest.main:IngestSettings"),
    "tfrecords": ("services.tfrecords.main", "services.tfrecords.settings:TFRecordsSettings"),
    "trainer": ("services.trainer.main", "services.trainer.main:TrainerSettings"),
    "evaluator": ("services.evaluator.main", "services.evaluator.settings:EvaluatorSettings"),
    "inference": ("services.inference.main", "services.inference.settings:InferenceSettings"),
}
# Required distributed settings have no meaning here; they are filled with what stands in for them.
_EMBEDDED_ENV = {"CLASSFORGE_KAFKA_BOOTSTRAP": "in-process", "CLASSFORGE_S3_ENDPOINT": "local-directory",
                 "CLASSFORGE_S3_ACCESS_KEY": "-", "CLASSFORGE_S3_SECRET_KEY": "-"}


def _settings_class(path: str) -> type[ServiceSettings]:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


class EmbeddedPlatform:
    """Every service in this process; `address` is the one gRPC endpoint serving all of them."""

    def __init__(self, out: Path):
        from services.model_server.core import ModelServerCore
        from services.model_server.main import build_server
        from services.model_server.settings import ModelServerSettings

        self.out = out
        serving = out / "serving"
        serving.mkdir(parents=True, exist_ok=True)
        self.store_factory = functools.partial(LocalObjectStore, out / "store")
        self.store = self.store_factory()
        self.bus = InProcessEventBus()
        model_settings = ModelServerSettings.load({"CLASSFORGE_MODEL_BASE_PATH": str(serving)}, poll_seconds=0.5)
        self.model_server = build_server(model_settings, ModelServerCore(str(serving), poll_seconds=0.5), 0)
        self.model_server.start()
        self.server = GrpcServer("classforge", port=0, host="127.0.0.1", grace_seconds=30)
        overrides = {
            "CLASSFORGE_MODEL_BASE_PATH": str(serving),
            "CLASSFORGE_MODEL_SERVER": f"127.0.0.1:{self.model_server.port}",
            "CLASSFORGE_TRAINER_WORK_DIR": str(out / "work" / "trainer"),
            "CLASSFORGE_EVALUATOR_WORK_DIR": str(out / "work" / "evaluator"),
            "CLASSFORGE_TFRECORDS_SCRATCH_DIR": str(out / "work" / "tfrecords"),
            "CLASSFORGE_INGEST_WORK_DIR": str(out / "work" / "ingest"),
            # Embedded mode answers over its one gRPC endpoint; REST would claim a fixed port (8086) per run.
            "CLASSFORGE_HTTP_PORT": "-1",
        }
        for name, (module, settings_path) in SERVICES.items():
            settings = _settings_class(settings_path).load({**_EMBEDDED_ENV, **overrides})
            context = ServiceContext(name, settings, self.store, self.bus, self.server, self.store_factory)
            importlib.import_module(module).build(context)
        self.server.on_stop(self.bus.close)
        self.server.on_stop(self.model_server.stop)
        self.server.start()
        self.address = f"127.0.0.1:{self.server.port}"
        self.channel = grpc.insecure_channel(self.address)
        wait_until_serving(self.channel, timeout=120)

    def stop(self) -> None:
        self.channel.close()
        self.server.stop()


def _print_event(event, job) -> None:
    kind = event.WhichOneof("payload")
    if kind == "training_progress" and event.training_progress.plan:  # the trainer's plan, once per run
        print(event.training_progress.plan, flush=True)
    elif kind == "training_progress":
        p = event.training_progress
        metrics = " ".join(f"{k} {v:.4f}" for k, v in sorted(p.metrics.items()) if "accuracy" in k)
        print(f"  training: stage {p.stage} epoch {p.epoch} step {p.step}  loss {p.total_loss:.4f} "
              f"(data {p.data_loss:.4f} + reg {p.regularization_loss:.4f})  {p.images_per_second:.0f} img/s  {metrics}",
              flush=True)
    elif kind == "stage_failed":
        print(f"  FAILED in {common_pb2.JobStage.Name(event.stage_failed.stage)}: {event.stage_failed.message}")
    else:
        print(f"  {kind}", flush=True)


def _print_dataset_report(store: LocalObjectStore, dataset_id: str) -> None:
    key = f"datasets/{dataset_id}/report.md"
    if store.exists(key):
        print(store.get_bytes(key).decode())


def _print_evaluation(store: LocalObjectStore, job_id: str) -> Path | None:
    """The numbers practitioners look at first, from the evaluator's evaluation.json."""
    key = f"reports/{job_id}/evaluation.json"
    if not store.exists(key):
        return None
    evaluation = json.loads(store.get_bytes(key))
    for task in evaluation["tasks"]:
        print(f"\ntask {task['task']} on {task['examples']} {evaluation['split']} images: accuracy "
              f"{task['accuracy']:.4f}, balanced accuracy {task['balanced_accuracy']:.4f}, "
              f"top-{task['top_k']} {task['top_k_accuracy']:.4f}")
        print(f"  {'class':<14} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}")
        for c in task["per_class"]:
            print(f"  {c['label']:<14} {c['precision']:>9.3f} {c['recall']:>7.3f} {c['f1']:>6.3f} {c['support']:>8}")
        matrix = task["confusion_matrix"]
        print(f"  confusion matrix ({matrix['axes']}):")
        width = max(5, *(len(label) for label in matrix["labels"]))
        print("  " + " " * width + " ".join(f"{label[:width]:>{width}}" for label in matrix["labels"]))
        for label, row in zip(matrix["labels"], matrix["counts"], strict=True):
            print(f"  {label[:width]:>{width}}" + " ".join(f"{int(v):>{width}}" for v in row))
    for reason in evaluation["blessing"]["reasons"]:
        print(f"  {reason}")
    return store.root / "reports" / job_id / "index.html"


def run(data: Path, out: Path, spec: common_pb2.JobSpec, *, classify_sample: bool = True) -> int:
    """Runs one job through every stage in this process; returns the exit code."""
    out.mkdir(parents=True, exist_ok=True)
    spec.source.local_path = str(data.resolve())
    spec.deploy.deploy = True
    platform = EmbeddedPlatform(out.resolve())
    try:
        stub = jobs_grpc.JobsServiceStub(platform.channel)
        job_id = stub.SubmitJob(jobs_pb.SubmitJobRequest(spec=spec)).job_id
        print(f"job {job_id}: {data} -> {out}", flush=True)
        job = None
        for reply in stub.WatchJob(jobs_pb.WatchJobRequest(job_id=job_id)):
            _print_event(reply.event, reply.job)
            if reply.event.WhichOneof("payload") == "dataset_prepared":
                _print_dataset_report(platform.store, reply.event.dataset_prepared.dataset.dataset_id)
            job = reply.job
        job = stub.GetJob(jobs_pb.GetJobRequest(job_id=job_id)).job
        status = common_pb2.JobStatus.Name(job.status)
        report = _print_evaluation(platform.store, job_id)
        print(f"\njob {job_id} {status}" + (f": {job.error}" if job.error else ""))
        if report is not None:
            print(f"report: {report}")
        if job.model.version and classify_sample:
            _classify_one(platform, data)
        return 0 if job.status == common_pb2.JOB_STATUS_SUCCEEDED else 1
    finally:
        platform.stop()


def _classify_one(platform: EmbeddedPlatform, data: Path) -> None:
    # The first image of the first label folder (hidden files such as markers are not images).
    image = next(p for p in sorted(data.rglob("*"))
                 if p.is_file() and p.parent != data and not p.name.startswith("."))
    stub = inference_service_pb2_grpc.InferenceServiceStub(platform.channel)
    reply = stub.Classify(inference_service_pb2.ClassifyRequest(image=image.read_bytes(), top_k=3), timeout=30)
    for prediction in reply.predictions:
        top = ", ".join(f"{s.label} {s.probability:.3f}" for s in prediction.top)
        print(f"served model {reply.model_name} v{reply.version} on {image.relative_to(data)}: {top}")


