"""Publishing blessed models to the model server, choosing the version that answers (rollback), and
listing what is served. No gRPC server and no Kafka here: the servicer calls this class, the event bus
feeds `handle`.

How a version becomes the one answering (works the same on TF Serving and on services.model_server):
the inference service owns the model server's config and sends it whole with
ModelService.HandleReloadConfigRequest — for every model under the base path,
`model_version_policy { specific { versions: <the kept versions> } }` (all kept versions stay loaded, so
a rollback is instant) and `version_labels { key: "<serving label>" value: <serving version> }`.
Classify without a version asks for the label. TF Serving only lets a label point at a version that is
already AVAILABLE, so publishing is: copy the version -> config with the new version, label unchanged
-> wait until GetModelStatus says AVAILABLE -> move the label (record it in the object store) -> retire
versions beyond the last K -> model_deployed. A rollback moves the label back. The chosen version per
model is kept in the object store (state/inference/models/<model>.json), and the config is re-sent every
CLASSFORGE_RECONCILE_SECONDS, so a restarted model server (which starts again from its own config
file) is brought back to the chosen versions within one period.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from classforge.v1 import common_pb2, events_pb2
from classforge.v1 import inference_service_pb2 as pb
from services.common.errors import ClassforgeError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.common.events import EventBus, new_event, payload_kind
from services.common.stage_work import JobCancelled, Stage
from services.common.storage import ObjectNotFound, ObjectStore
from services.inference import metrics
from services.inference import tfs_api as tfs
from services.inference.model_server_client import ModelServerClient, ModelServerError
from services.inference.repository import ModelRepository, check_model_name

log = logging.getLogger("classforge.inference")

STATE_PREFIX = "state/inference/"
PRODUCER = "inference"

_STATES = {
    tfs.State.START: pb.MODEL_VERSION_STATE_LOADING,
    tfs.State.LOADING: pb.MODEL_VERSION_STATE_LOADING,
    tfs.State.AVAILABLE: pb.MODEL_VERSION_STATE_AVAILABLE,
    tfs.State.UNLOADING: pb.MODEL_VERSION_STATE_UNLOADING,
    tfs.State.END: pb.MODEL_VERSION_STATE_END,
}


class LoadFailed(FailedPrecondition):
    """The model server could not load a published version (a broken SavedModel)."""


def _model_server_error(exc: ModelServerError) -> ClassforgeError:
    if exc.status in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"):
        return Unavailable(exc.message)  # retried: the event is redelivered, the caller may retry
    return FailedPrecondition(exc.message)


def job_state_key(job_id: str, leaf: str) -> str:
    """The publisher's record of one job: `deploy.json` (its deploy options), `published.json` (model name,
    version, SavedModel URI, time) once a version of it was published."""
    if not job_id or "/" in job_id or job_id in (".", ".."):
        raise InvalidArgument("job_id", f"{job_id!r} cannot be used in an object key")
    return f"{STATE_PREFIX}jobs/{job_id}/{leaf}"


def serving_state_key(name: str) -> str:
    """The version of model `name` chosen to answer: {"serving": version, "reason", "updated_at"}."""
    return f"{STATE_PREFIX}models/{check_model_name(name)}.json"


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Publisher:
    def __init__(self, store: ObjectStore, bus: EventBus, repo: ModelRepository, client: ModelServerClient, *,
                 server_base_path: str, keep_versions: int = 3, default_model: str = "classforge",
                 serving_label: str = "stable", publish_timeout: float = 300.0,
                 on_file: Callable[[str], None] | None = None, poll_interval: float = 0.1,
                 heartbeat_seconds: float = 30.0):
        self.store, self.bus, self.repo, self.client = store, bus, repo, client
        self.stage = Stage(bus, store, common_pb2.JOB_STAGE_DEPLOYMENT, PRODUCER, heartbeat_seconds=heartbeat_seconds)
        self.server_base_path = server_base_path
        self.keep_versions = max(1, keep_versions)
        self.default_model = default_model
        self.serving_label = serving_label
        self.publish_timeout = publish_timeout
        self.on_file = on_file  # observer of the copy (tests)
        self.poll_interval = poll_interval
        self._publish_lock = threading.Lock()  # one publish/rollback at a time per process
        self._config_lock = threading.Lock()
        self._labelled: dict[str, int] = {}  # the label target last sent, per model
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._reconciler: threading.Thread | None = None

    # ------------------------------------------------------------------ events

    def handle(self, event: events_pb2.Event) -> None:
        kind = payload_kind(event)
        if kind == "job_submitted":
            deploy = event.job_submitted.spec.deploy
            self._put_json(self._job_key(event.job_id, "deploy.json"),
                           {"deploy": deploy.deploy, "model_name": deploy.model_name})
        elif kind == "evaluation_completed":
            self._on_evaluation_completed(event)

    def _on_evaluation_completed(self, event: events_pb2.Event) -> None:
        job_id, evaluation = event.job_id, event.evaluation_completed
        context = {"job_id": job_id, "model_uri": evaluation.model.uri}
        if not evaluation.blessed:
            log.info("model not blessed: not published", extra={**context, "reasons": list(evaluation.reasons)})
            metrics.PUBLISHED.labels("", "unblessed").inc()
            return
        deploy = self._get_json(self._job_key(job_id, "deploy.json"))
        if deploy is None:
            log.warning("no job_submitted seen for this job: not published", extra=context)
            return
        if not deploy.get("deploy"):
            log.info("spec.deploy.deploy is false: not published", extra=context)
            return
        name = deploy.get("model_name") or evaluation.model.model_name or self.default_model
        record = self._get_json(self._job_key(job_id, "published.json"))
        if record is not None:  # a redelivery: the version exists, say so again
            log.info("already published: model_deployed sent again", extra={**context, **record})
            self._deployed(job_id, record["uri"], record["model_name"], record["version"])
            return
        try:
            # A cancel is honoured up to the copy; a version that is in must be finished, never left half-served.
            with self.stage.working(job_id, f"publishing model {name!r}"):
                version = self.publish(job_id, evaluation.model.uri, name)
        except JobCancelled:
            self.stage.acknowledge_cancel(job_id)
            return
        except (LoadFailed, NotFound, InvalidArgument) as exc:  # retrying cannot help: the job fails
            metrics.PUBLISHED.labels(name, "failed").inc()
            log.error("publishing failed", extra={**context, "error": exc.message})
            self.stage.fail(job_id, f"publishing model {name!r} failed: {exc.message}")
            return
        self._deployed(job_id, evaluation.model.uri, name, version)

    def _deployed(self, job_id: str, uri: str, name: str, version: int) -> None:
        self.bus.publish(new_event(job_id, PRODUCER, model_deployed=events_pb2.ModelDeployed(
            model=common_pb2.ModelRef(job_id=job_id, uri=uri, model_name=name, version=version))))

    # ------------------------------------------------------------------ publishing

    def publish(self, job_id: str, uri: str, name: str) -> int:
        """Copies the SavedModel at `uri` as the next version of `name`, waits until it is AVAILABLE,
        makes it the version answering and retires versions beyond the last K. Returns the version."""
        check_model_name(name, "spec.deploy.model_name")
        if not uri:
            raise InvalidArgument("evaluation_completed.model.uri", "is empty")
        prefix = self.store.key_from_uri(uri.rstrip("/")) + "/"
        with self._publish_lock:
            version = self.repo.find_job(name, job_id)  # installed before a crash?
            if version is None:
                started = time.perf_counter()
                version = self.repo.install(name, self.store, prefix, {
                    "job_id": job_id, "uri": uri, "published_at": _now()}, on_file=self.on_file)
                log.info("version copied", extra={"job_id": job_id, "model": name, "version": version,
                                                  "seconds": round(time.perf_counter() - started, 3)})
            self.reconcile()
            try:
                self.wait_available(name, version, self.publish_timeout)
            except LoadFailed:
                self.repo.retire(name, version)
                self.reconcile()
                raise
            self._put_json(self._model_key(name), {"serving": version, "reason": f"published job {job_id}",
                                                   "updated_at": _now()})
            self.reconcile()
            self._prune(name)
            self._put_json(self._job_key(job_id, "published.json"),
                           {"model_name": name, "version": version, "uri": uri, "published_at": _now()})
        metrics.PUBLISHED.labels(name, "published").inc()
        log.info("version published and serving", extra={"job_id": job_id, "model": name, "version": version})
        return version

    def _prune(self, name: str) -> None:
        versions = self.repo.versions(name)
        keep = set(versions[-self.keep_versions:]) | {self.serving_version(name)}
        retired = [v for v in versions if v not in keep]
        for version in retired:
            self.repo.retire(name, version)
        if retired:
            log.info("old versions retired", extra={"model": name, "versions": retired})
            self.reconcile()
        self.repo.clean_staging(name)

    def wait_available(self, name: str, version: int, timeout: float) -> None:
        deadline, last = time.monotonic() + timeout, "not known to the model server"
        while True:
            try:
                statuses = self.client.status(name, version)
            except ModelServerError as exc:
                statuses, last = [], f"model server: {exc.status}"
            for status in statuses:
                if status.version != version:
                    continue
                if status.state == tfs.State.AVAILABLE:
                    return
                if status.state == tfs.State.END and status.error:
                    raise LoadFailed(f"the model server could not load version {version} of model {name!r}: "
                                     f"{status.error}")
                last = tfs.State.Name(status.state)
            if time.monotonic() >= deadline:
                raise Unavailable(f"version {version} of model {name!r} did not become AVAILABLE within "
                                  f"{timeout:.0f}s (last: {last})")
            time.sleep(self.poll_interval)

    # ------------------------------------------------------------------ which version answers

    def serving_version(self, name: str, versions: list[int] | None = None) -> int | None:
        """The version chosen to answer: the last published or rolled back to, if still kept; else the latest."""
        versions = self.repo.versions(name) if versions is None else versions
        if not versions:
            return None
        chosen = (self._get_json(self._model_key(name)) or {}).get("serving")
        return chosen if chosen in versions else versions[-1]

    def reconcile(self) -> tfs.model_server_config_pb2.ModelServerConfig:
        """Sends the model server the whole config: every model under the base path with its kept
        versions, and the serving label on the chosen version once that version is AVAILABLE (until
        then the label stays where it was)."""
        with self._config_lock:
            config = tfs.model_server_config_pb2.ModelServerConfig()
            config.model_config_list.SetInParent()  # an empty list is a config too: serve nothing
            labels: dict[str, int] = {}
            try:
                for name in self.repo.models():
                    versions = self.repo.versions(name)
                    if not versions:
                        continue
                    available = {s.version for s in self.client.status(name) if s.state == tfs.State.AVAILABLE}
                    model = config.model_config_list.config.add(
                        name=name, base_path=os.path.join(self.server_base_path, name), model_platform="tensorflow")
                    model.model_version_policy.specific.versions.extend(versions)
                    wanted, previous = self.serving_version(name, versions), self._labelled.get(name)
                    target = wanted if wanted in available else (
                        previous if previous in available and previous in versions else None)
                    if target is not None:
                        model.version_labels[self.serving_label] = target
                        labels[name] = target
                self.client.reload_config(config, timeout=max(60.0, self.publish_timeout))
            except ModelServerError as exc:
                raise _model_server_error(exc) from None
            self._labelled = labels
            return config

    def rollback(self, name: str, version: int, timeout: float | None = None) -> pb.ServedModel:
        check_model_name(name)
        if version <= 0:
            raise InvalidArgument("version", f"must be a positive version number, got {version}")
        if not self.repo.exists(name):
            raise NotFound("model", name)
        kept = self.repo.versions(name)
        if version not in kept:
            error = NotFound("model version", f"{name}/{version}")
            error.message += f"; the kept versions are {', '.join(map(str, kept)) or 'none'}"
            raise error
        with self._publish_lock:
            self.reconcile()
            self.wait_available(name, version, self.publish_timeout if timeout is None else timeout)
            self._put_json(self._model_key(name), {"serving": version, "reason": "rollback", "updated_at": _now()})
            self.reconcile()
        log.info("rolled back", extra={"model": name, "version": version})
        return self.list_models(name)[0]

    def list_models(self, name: str = "") -> list[pb.ServedModel]:
        if name:
            check_model_name(name)
            if not self.repo.exists(name):
                raise NotFound("model", name)
        served = []
        for model in [name] if name else self.repo.models():
            versions = self.repo.versions(model)
            try:
                states = {s.version: s.state for s in self.client.status(model)}
            except ModelServerError as exc:
                raise _model_server_error(exc) from None
            serving = self._labelled.get(model, self.serving_version(model, versions))
            served.append(pb.ServedModel(model_name=model, versions=[
                pb.ModelVersion(version=v, state=_STATES.get(states.get(v), pb.MODEL_VERSION_STATE_UNSPECIFIED),
                                job_id=self.repo.marker(model, v).get("job_id", ""), serving=v == serving)
                for v in sorted(versions, reverse=True)]))
        return served

    def has_label(self, name: str) -> bool:
        return name in self._labelled

    # ------------------------------------------------------------------ background reconcile

    def start_reconciler(self, interval: float) -> None:
        if interval <= 0 or self._reconciler is not None:
            return

        def loop() -> None:
            while not self._stopping.is_set():
                self._wake.wait(interval)
                self._wake.clear()
                if self._stopping.is_set():
                    return
                try:
                    self.reconcile()
                except Exception as exc:  # noqa: BLE001 - retried next period
                    log.warning("re-sending the model config failed", extra={"error": str(exc)})

        self._reconciler = threading.Thread(target=loop, name="inference-reconcile", daemon=True)
        self._reconciler.start()

    def request_reconcile(self) -> None:
        """Asks for a config re-send soon (a request found the serving label missing)."""
        if self._reconciler is not None:
            self._wake.set()
        else:
            threading.Thread(target=self._reconcile_quietly, daemon=True).start()

    def _reconcile_quietly(self) -> None:
        try:
            self.reconcile()
        except Exception as exc:  # noqa: BLE001
            log.warning("re-sending the model config failed", extra={"error": str(exc)})

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._reconciler is not None:
            self._reconciler.join(timeout=10)

    # ------------------------------------------------------------------ state in the object store

    @staticmethod
    def _job_key(job_id: str, leaf: str) -> str:
        return job_state_key(job_id, leaf)

    @staticmethod
    def _model_key(name: str) -> str:
        return serving_state_key(name)

    def _get_json(self, key: str) -> dict | None:
        try:
            return json.loads(self.store.get_bytes(key))
        except ObjectNotFound:
            return None

    def _put_json(self, key: str, value: dict) -> None:
        self.store.put_bytes(key, json.dumps(value).encode(), "application/json")
