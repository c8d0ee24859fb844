"""Embedded mode: `classforge run DATA --out DIR` runs every service in one process.

The same service classes, events and outputs as the distributed deployment: each service's own
`build(context)` wires its servicer and its event subscriptions, but the context holds an
in-process event bus and a local-directory object store instead of Kafka and MinIO, one gRPC
server hosts every servicer, and the model-server stand-in runs on a thread. The run itself is a
client of that server: SubmitJob, then WatchJob until the job ends, exactly as `classforge submit`
and `classforge watch` talk to a deployment.

Ingest reads local files only under the folders the platform is given (CLASSFORGE_INGEST_LOCAL_ROOTS,
as in a deployment): `run` gives it the user's SOURCE (its folder, for a list file) and nothing
else, so a job's local_path, or a symbolic link inside SOURCE, cannot lead elsewhere on the machine.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from classforge.v1 import common_pb2, inference_service_pb2, inference_service_pb2_grpc
from classforge.v1 import jobs_service_pb2 as jobs_pb
from classforge.v1 import jobs_service_pb2_grpc as jobs_grpc
from services import progress
from services.common.channels import open_channel
from services.common.errors import InvalidArgument
from services.common.events import InProcessEventBus
from services.common.grpc_server import GrpcServer, wait_until_serving
from services.common.runtime import ServiceContext
from services.common.settings import ServiceSettings
from services.common.storage import LocalObjectStore, open_object_store
from services.ingest.sources import archive_format_of, download_prefix, local_source_kind

log = logging.getLogger("classforge.embedded")

# service name -> (module with build(), settings class "module:Class")
SERVICES = {
    "jobs": ("services.jobs.main", "services.jobs.settings:JobsSettings"),
    "ingest": ("services.ingest.main", "services.ingest.settings:IngestSettings"),
    "tfrecords": ("services.tfrecords.main", "services.tfrecords.settings:TFRecordsSettings"),
    "trainer": ("services.trainer.main", "services.trainer.settings:TrainerSettings"),
    "evaluator": ("services.evaluator.main", "services.evaluator.settings:EvaluatorSettings"),
    "inference": ("services.inference.main", "services.inference.settings:InferenceSettings"),
}
# Required distributed settings have no meaning here; they are filled with what stands in for them.
_EMBEDDED_ENV = {"CLASSFORGE_KAFKA_BOOTSTRAP": "in-process", "CLASSFORGE_S3_ENDPOINT": "local-directory",
                 "CLASSFORGE_S3_ACCESS_KEY": "-", "CLASSFORGE_S3_SECRET_KEY": "-"}
# Every gRPC server and channel of embedded mode is plaintext on loopback (see EmbeddedPlatform), so the
# services' settings say so too: the inference service's model-server client reads them.
_EMBEDDED_GRPC = {"CLASSFORGE_LISTEN_HOST": "127.0.0.1", "CLASSFORGE_GRPC_PLAINTEXT": "true"}


def _settings_class(path: str) -> type[ServiceSettings]:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


class EmbeddedPlatform:
    """Every service in this process; `address` is the one gRPC endpoint serving all of them. Ingest may
    read local sources only under `local_roots` (none: no local path)."""

    def __init__(self, out: Path, local_roots: Sequence[Path] = ()):
        from services.model_server.core import ModelServerCore
        from services.model_server.main import build_server
        from services.model_server.settings import ModelServerSettings

        self.out = out
        serving = out / "serving"
        serving.mkdir(parents=True, exist_ok=True)
        self.store_factory = functools.partial(LocalObjectStore, out / "store")
        self.store = self.store_factory()
        self.bus = InProcessEventBus()
        # Plaintext on 127.0.0.1 on purpose, and without the plaintext warning: both servers exist only for
        # the life of this process and for this process (its own client below, the inference service's
        # model-server client), no other host can reach a loopback port, and TLS files would be one more
        # thing a user must make before `classforge run DATA` works.
        model_settings = ModelServerSettings.load({"CLASSFORGE_MODEL_BASE_PATH": str(serving), **_EMBEDDED_GRPC},
                                                  poll_seconds=0.5)
        self.model_server = build_server(model_settings, ModelServerCore(str(serving), poll_seconds=0.5), 0,
                                         tls=None, warn_plaintext=False)
        self.model_server.start()
        # No authenticator, here or on the model server above: both bind 127.0.0.1 only, for one user's run in
        # one process, and the run is their only client; a token would guard nothing the user cannot already
        # read on disk. Jobs get no owner, and every call is allowed (services.common.auth.current_identity()
        # is None).
        self.server = GrpcServer("classforge", port=0, host="127.0.0.1", grace_seconds=30, plaintext=True,
                                 warn_plaintext=False)
        overrides = {
            "CLASSFORGE_MODEL_BASE_PATH": str(serving),
            "CLASSFORGE_MODEL_SERVER": f"127.0.0.1:{self.model_server.port}",
            "CLASSFORGE_TRAINER_WORK_DIR": str(out / "work" / "trainer"),
            "CLASSFORGE_EVALUATOR_WORK_DIR": str(out / "work" / "evaluator"),
            "CLASSFORGE_TFRECORDS_SCRATCH_DIR": str(out / "work" / "tfrecords"),
            "CLASSFORGE_INGEST_WORK_DIR": str(out / "work" / "ingest"),
            "CLASSFORGE_INGEST_LOCAL_ROOTS": _roots_setting(local_roots),
            # Embedded mode answers over its one gRPC endpoint; REST would claim a fixed port (8086) per run.
            "CLASSFORGE_HTTP_PORT": "-1",
            # The stand-in model server does not batch, so concurrent Classify calls are batched before it
            # (bench.inference, c=8 and 32: 0.64-0.81x of direct Predict's throughput without, 0.97-1.41x with).
            "CLASSFORGE_BATCH_MAX_SIZE": "8",
            # Heartbeats and training progress move the bars; in one process they cost next to nothing.
            "CLASSFORGE_HEARTBEAT_SECONDS": "2",
            "CLASSFORGE_TRAINER_PROGRESS_SECONDS": "2",
        }
        for name, (module, settings_path) in SERVICES.items():
            settings = _settings_class(settings_path).load({**_EMBEDDED_ENV, **overrides, **_EMBEDDED_GRPC})
            context = ServiceContext(name, settings, self.store, self.bus, self.server, self.store_factory)
            importlib.import_module(module).build(context)
        self.server.on_stop(self.bus.close)
        self.server.on_stop(self.model_server.stop)
        self.server.start()
        self.address = f"127.0.0.1:{self.server.port}"
        self.channel = open_channel(self.address, None, plaintext=True)
        wait_until_serving(self.channel, timeout=120)

    def stop(self) -> None:
        self.channel.close()
        self.server.stop()


def _roots_setting(roots: Sequence[Path]) -> str:
    """CLASSFORGE_INGEST_LOCAL_ROOTS for `roots`; ':' separates them, so no root may contain one."""
    for root in roots:
        if ":" in str(root):
            raise InvalidArgument("SOURCE", f"{root}: a folder whose path contains ':' cannot be read in embedded "
                                            f"mode; move or rename it")
    return ":".join(str(root) for root in roots)


def allowed_root(source: common_pb2.DataSource) -> Path:
    """The one folder (or archive) ingest may read for `source` (a job_source result): the folder or
    archive itself, or the folder of a list file, whose paths are relative to it."""
    path = Path(source.local_path)
    return path if path.is_dir() or archive_format_of(path) else path.parent


def _show_dataset_report(store: LocalObjectStore, dataset_id: str, show) -> None:
    key = f"datasets/{dataset_id}/report.md"
    if store.exists(key):
        show(store.get_bytes(key).decode())


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


def job_source(source: str, out: Path, list_file: str = "") -> common_pb2.DataSource:
    """What `classforge run SOURCE` hands to ingest: SOURCE is what `classforge dataset prepare` takes (a
    folder per label, a list file, or a .zip/.tar/.tar.gz archive of either, read by ingest's one reader
    of local sources), or an object-store prefix `s3://HOST:PORT/BUCKET/PREFIX`, copied into `out`
    first. InvalidArgument("SOURCE") naming the path when it cannot be used, before anything starts."""
    if source.startswith("s3://"):
        return common_pb2.DataSource(local_path=str(_download(source, out / "work" / "source").resolve()),
                                     list_file=list_file)
    path = Path(source).expanduser().resolve()
    kind = local_source_kind(path, "SOURCE")
    if kind == "list" and list_file:
        raise InvalidArgument("--list-file", f"{source} is itself a list file; --list-file names a list file "
                                             f"inside a folder or archive")
    return common_pb2.DataSource(local_path=str(path), list_file=list_file)


def _download(uri: str, dest: Path) -> Path:
    """Copies the objects under an s3://HOST:PORT/BUCKET/PREFIX URI (credentials from CLASSFORGE_S3_*) into
    `dest` with ingest's own download (its size limits; objects it cannot use are left out and said)."""
    parts = urlsplit(uri)
    bucket, _, prefix = parts.path.lstrip("/").partition("/")
    if not parts.netloc or not bucket or not prefix.strip("/"):
        raise InvalidArgument("SOURCE", f"{uri!r}: expected s3://HOST:PORT/BUCKET/PREFIX")
    settings = ServiceSettings.load({**_EMBEDDED_ENV, **os.environ})
    store = open_object_store(f"s3://{parts.netloc}/{bucket}", access_key=settings.s3_access_key,
                              secret_key=settings.s3_secret_key, secure=settings.s3_secure)
    if next(iter(store.list(prefix.rstrip("/") + "/")), None) is None:
        raise InvalidArgument("SOURCE", f"{uri}: no objects under this prefix")
    if dest.exists():
        shutil.rmtree(dest)  # a copy from an earlier run: the prefix may have changed since
    left_out = download_prefix(store, prefix, dest)
    for reject in left_out:
        print(f"  left out {reject.path}: {reject.reason}", file=sys.stderr)
    return dest


def run(source: str | Path, out: Path, spec: common_pb2.JobSpec, *, list_file: str = "",
        classify_sample: bool = True, plain: bool = False) -> int:
    """Runs one job through every stage in this process; returns the exit code. Progress: bars on a
    terminal, plain lines at a bounded rate otherwise (or with `plain`)."""
    out.mkdir(parents=True, exist_ok=True)
    spec.source.CopyFrom(job_source(str(source), out, list_file or spec.source.list_file))
    spec.deploy.deploy = True
    platform = EmbeddedPlatform(out.resolve(), [allowed_root(spec.source)])
    try:
        stub = jobs_grpc.JobsServiceStub(platform.channel)
        job_id = stub.SubmitJob(jobs_pb.SubmitJobRequest(spec=spec)).job_id
        print(f"job {job_id}: {source} -> {out}", flush=True)
        dataset_id = ""
        with progress.display(plain=plain) as shown:
            for reply in stub.WatchJob(jobs_pb.WatchJobRequest(job_id=job_id, include_heartbeats=True)):
                shown.update(reply.event, reply.job)
                if reply.event.WhichOneof("payload") == "training_progress" and reply.event.training_progress.plan:
                    shown.note(reply.event.training_progress.plan)  # the trainer's plan, once per run
                if reply.event.WhichOneof("payload") == "dataset_prepared":
                    dataset_id = reply.event.dataset_prepared.dataset.dataset_id
                    _show_dataset_report(platform.store, dataset_id, shown.note)
        job = stub.GetJob(jobs_pb.GetJobRequest(job_id=job_id)).job
        status = common_pb2.JobStatus.Name(job.status)
        report = _print_evaluation(platform.store, job_id)
        print(f"\njob {job_id} {status}" + (f": {job.error}" if job.error else ""))
        if report is not None:
            print(f"report: {report}")
        if job.model.version and classify_sample and dataset_id:
            _classify_one(platform, dataset_id)
        return 0 if job.status == common_pb2.JOB_STATUS_SUCCEEDED else 1
    finally:
        platform.stop()


def _classify_one(platform: EmbeddedPlatform, dataset_id: str) -> None:
    """The served model on one image of the prepared dataset (held out where there is a test split)."""
    prefix = f"datasets/{dataset_id}/"
    labels = json.loads(platform.store.get_bytes(prefix + "labels.json"))
    for name in ("test.list", "val.list", "train.list"):
        lines = platform.store.get_bytes(prefix + name).decode().splitlines() if platform.store.exists(
            prefix + name) else []
        if lines:
            break
    else:
        return
    path, *indices = lines[0].split()
    truth = ", ".join(f"{task['name']} {task['classes'][int(i)]}" for task, i in zip(labels["tasks"], indices,
                                                                                       strict=True) if int(i) >= 0)
    stub = inference_service_pb2_grpc.InferenceServiceStub(platform.channel)
    image = platform.store.get_bytes(prefix + path)
    reply = stub.Classify(inference_service_pb2.ClassifyRequest(image=image, top_k=3), timeout=30)
    for prediction in reply.predictions:
        top = ", ".join(f"{s.label} {s.probability:.3f}" for s in prediction.top)
        print(f"served model {reply.model_name} v{reply.version} on {name.split('.')[0]} image {path} "
              f"(true {truth}): {top}")
