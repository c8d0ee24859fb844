"""The evaluator's logic: evaluate a trained model on its records, decide the blessing, write the
report, publish the outcome. No gRPC and no Kafka here: the servicer calls `evaluate`/`get_report`,
the event bus feeds `handle`.

Events (group "evaluator", kinds job_submitted and training_completed):
- job_submitted: the job's gates and deploy options are kept (state/evaluator/<job>/gates.pb and
  deploy.pb); every event of a job shares the Kafka key, so they are there before training_completed.
- training_completed: the model is evaluated on the records' evaluation split (test, else val),
  reports/<job>/ is written (evaluation.json last) and evaluation_completed is published with the
  decision and its reasons. Idempotent: when reports/<job>/evaluation.json already exists the stored
  outcome is published again and nothing is recomputed. A problem with the user's data or model
  (FailedPrecondition, InvalidArgument, NotFound) becomes stage_failed(JOB_STAGE_EVALUATION) and the
  handler returns normally; an unreachable dependency (Unavailable) raises, so the bus retries. While
  it evaluates the service sends heartbeats; a job cancelled meanwhile gets job_cancelled instead of
  evaluation_completed, and an evaluation that fails leaves no partial report behind.

Baseline for the regression checks ("the model now served"): the latest model this evaluator blessed
for the same served model name (`spec.deploy.model_name`, default "classforge") in a job that asked to
deploy, recorded in state/evaluator/served/<model name>.json when it was blessed. Its numbers must come
from the same evaluation split: when its evaluation.json was computed on the same records build and
split they are read from there (`source: report`), otherwise the baseline SavedModel is re-run on this
job's split, numbers only (`source: rerun`). With no such model, or one whose classes differ, the
regression checks are skipped and a reason line says why.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format

from classforge.v1 import common_pb2, evaluator_service_pb2, events_pb2
from services.common import artefacts
from services.common.errors import ClassforgeError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.common.events import EventBus, new_event, payload_kind
from services.common.stage_work import JobCancelled, Stage
from services.common.storage import ObjectNotFound, ObjectStore
from services.evaluator import blessing, report
from services.evaluator import compare as compare_mod
from services.evaluator import predictions as predictions_mod
from services.evaluator.engine import Evaluation, Options, evaluate
from services.evaluator.images import save_thumbnail
from services.evaluator.metrics_export import EVALUATION_IMAGES_PER_SECOND, EVALUATION_SECONDS, EVALUATIONS
from services.evaluator.model import ServingModel, load_cam_model

log = logging.getLogger("classforge.evaluator")

STATE_PREFIX = "state/evaluator/"
REPORTS_PREFIX = artefacts.REPORTS_PREFIX
COMPARISONS_PREFIX = artefacts.COMPARISONS_PREFIX
DEFAULT_MODEL_NAME = "classforge"
USER_ERRORS = (FailedPrecondition, InvalidArgument, NotFound)


@dataclass
class Limits:
    default_max_regression: float = 0.0
    default_max_class_regression: float = 0.0


def records_factory(store: ObjectStore, uri: str, cache_dir: Path, batch_size: int):
    from services.evaluator.records import EvaluationRecords

    return EvaluationRecords(store, uri, cache_dir, batch_size)


class EvaluatorDomain:
    def __init__(self, bus: EventBus, store: ObjectStore, work_dir: str | Path, options: Options | None = None,
                 limits: Limits | None = None, producer: str = "evaluator", open_records=records_factory,
                 heartbeat_seconds: float = 30.0):
        self.bus, self.store, self.producer = bus, store, producer
        self.stage = Stage(bus, store, common_pb2.JOB_STAGE_EVALUATION, producer, heartbeat_seconds=heartbeat_seconds)
        self.work_dir = Path(work_dir)
        self.options = options or Options()
        self.limits = limits or Limits()
        self.open_records = open_records
        self._lock = threading.Lock()  # one evaluation at a time: each one uses every core it gets

    # ------------------------------------------------------------------ events

    def handle(self, event: events_pb2.Event) -> None:
        kind = payload_kind(event)
        if kind == "job_submitted":
            spec = event.job_submitted.spec
            self.store.put_bytes(f"{STATE_PREFIX}{event.job_id}/gates.pb", spec.gates.SerializeToString())
            self.store.put_bytes(f"{STATE_PREFIX}{event.job_id}/deploy.pb", spec.deploy.SerializeToString())
            self.store.put_bytes(f"{STATE_PREFIX}{event.job_id}/spec.pb", spec.SerializeToString())  # for compare
        elif kind == "training_completed":
            self._on_training_completed(event.job_id, event.training_completed)

    def _on_training_completed(self, job_id: str, done: events_pb2.TrainingCompleted) -> None:
        stored = self._stored_report(job_id)
        if stored is not None:
            log.info("report already complete: publishing its outcome again", extra={"job_id": job_id})
            self._publish(job_id, stored)
            return
        gates, deploy = self._job_spec(job_id)
        try:
            with self.stage.working(job_id, "evaluating the model"):
                evaluation = self.run(job_id, done.model, done.records_uri, gates, deploy, done.history_uri)
            if self.stage.is_cancelled(job_id):
                raise JobCancelled(job_id, "cancelled")
        except JobCancelled:
            self.stage.acknowledge_cancel(job_id)
            return
        except USER_ERRORS as exc:
            log.warning("evaluation failed on the job's data or model", extra={"job_id": job_id, "error": exc.message})
            EVALUATIONS.labels("failed").inc()
            self._remove_incomplete_report(job_id)
            self.stage.fail(job_id, f"evaluation: {exc.message}")
            return
        except BaseException:
            self._remove_incomplete_report(job_id)
            raise
        self._publish(job_id, evaluation)

    def _remove_incomplete_report(self, job_id: str) -> None:
        """Best effort: a report without its evaluation.json (written last) is never left behind."""
        prefix = f"{REPORTS_PREFIX}{job_id}/"
        try:
            if not self.store.exists(prefix + "evaluation.json"):
                self.store.delete_prefix(prefix)
        except Exception:  # noqa: BLE001 - the evaluation's own error is the one to report
            log.warning("could not remove an incomplete report", extra={"job_id": job_id}, exc_info=True)

    def _publish(self, job_id: str, evaluation: dict) -> None:
        b = evaluation["blessing"]
        self.bus.publish(new_event(job_id, self.producer, evaluation_completed=events_pb2.EvaluationCompleted(
            model=_model_ref(evaluation), blessed=b["blessed"], reasons=b["reasons"],
            report_uri=evaluation["report_uri"], accuracy=evaluation["tasks"][0]["accuracy"])))

    def _job_spec(self, job_id: str) -> tuple[common_pb2.EvaluationGates, common_pb2.DeployOptions]:
        gates, deploy = common_pb2.EvaluationGates(), common_pb2.DeployOptions()
        try:
            gates.ParseFromString(self.store.get_bytes(f"{STATE_PREFIX}{job_id}/gates.pb"))
            deploy.ParseFromString(self.store.get_bytes(f"{STATE_PREFIX}{job_id}/deploy.pb"))
        except ObjectNotFound:
            log.warning("no job_submitted seen for this job: default gates, no deploy", extra={"job_id": job_id})
        return gates, deploy

    # ------------------------------------------------------------------ gRPC

    def evaluate(self, request: evaluator_service_pb2.EvaluateRequest) -> evaluator_service_pb2.EvaluationReport:
        """Ad-hoc evaluation (the Evaluate RPC): writes reports/<job_id>/ and returns the report. It
        publishes nothing: the pipeline's outcome is the event path's. The baseline is the served
        model of the default name unless the job's spec said otherwise."""
        if not request.job_id:
            raise InvalidArgument("job_id", "is required: the report is written under reports/<job_id>/")
        if not request.model.uri:
            raise InvalidArgument("model.uri", "is required: the URI of the SavedModel to evaluate")
        if not request.records_uri:
            raise InvalidArgument("records_uri", "is required: the records build to evaluate on")
        stored_gates, deploy = self._job_spec(request.job_id)
        gates = request.gates if request.HasField("gates") else stored_gates
        evaluation = self.run(request.job_id, request.model, request.records_uri, gates, deploy, "",
                              remember=False)
        return to_proto(evaluation)

    def get_report(self, job_id: str) -> evaluator_service_pb2.EvaluationReport:
        if not job_id:
            raise InvalidArgument("job_id", "is required")
        stored = self._stored_report(job_id)
        if stored is None:
            raise NotFound("evaluation report", job_id)
        return to_proto(stored)

    # ------------------------------------------------------------------ the work

    def run(self, job_id: str, model_ref: common_pb2.ModelRef, records_uri: str,
            gates: common_pb2.EvaluationGates, deploy: common_pb2.DeployOptions, history_uri: str = "",
            remember: bool = True) -> dict:
        with self._lock:
            started = time.perf_counter()
            scratch = self.work_dir / "jobs" / job_id
            shutil.rmtree(scratch, ignore_errors=True)
            try:
                evaluation = self._run(job_id, model_ref, records_uri, gates, deploy, history_uri, scratch, remember)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            EVALUATIONS.labels("blessed" if evaluation["blessing"]["blessed"] else "not_blessed").inc()
            EVALUATION_SECONDS.observe(time.perf_counter() - started)
            return evaluation

    def _run(self, job_id, model_ref, records_uri, gates, deploy, history_uri, scratch: Path, remember) -> dict:
        model_dir = self._download_model(model_ref.uri, scratch / "model")
        model = ServingModel(model_dir / "saved_model")
        records = self.open_records(self.store, records_uri, self.work_dir / "records-cache", self.options.batch_size)
        out_dir = scratch / "report"
        result: Evaluation = evaluate(model, records.examples(), records.tasks, out_dir, self.options,
                                      load_cam_model(model_dir), refetch=records.examples)
        EVALUATION_IMAGES_PER_SECOND.set(result.images_per_second)
        model_name = deploy.model_name or DEFAULT_MODEL_NAME
        baseline, note = self._baseline(job_id, model_name, records, scratch / "baseline")
        decision = blessing.decide(result.tasks, gates, baseline,
                                   default_max_regression=self.limits.default_max_regression,
                                   default_max_class_regression=self.limits.default_max_class_regression,
                                   baseline_note=note)
        prefix = f"{REPORTS_PREFIX}{job_id}/"
        document = {
            "job_id": job_id,
            "model": json_format.MessageToDict(model_ref, preserving_proto_field_name=True),
            "records": records.identity(), "records_uri": records_uri, "split": records.split,
            "examples": result.examples,
            "tasks": result.tasks, "duplicates": result.duplicates, "cam_status": result.cam_status,
            "gates": json_format.MessageToDict(gates, preserving_proto_field_name=True),
            "baseline": ({"job_id": baseline.job_id, "source": baseline.source, "tasks": baseline.tasks}
                         if baseline else None),
            "blessing": decision.to_json(), "served_model_name": model_name,
            "images_per_second": result.images_per_second, "seconds": result.seconds,
            "report_uri": self.store.uri(prefix.rstrip("/")) + "/",
            "created_at": time.time(),
        }
        report.write(out_dir, document, self._history(history_uri))
        self.store.delete_prefix(prefix)  # a stale report (an ad-hoc re-run) never mixes with this one
        files = sorted(p for p in out_dir.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name == report.EVALUATION_JSON)  # evaluation.json last: the report is complete
        for path in files:
            self.store.put_file(prefix + path.relative_to(out_dir).as_posix(), path, _content_type(path))
        if remember and decision.blessed and deploy.deploy:
            self.store.put_bytes(f"{STATE_PREFIX}served/{model_name}.json", json.dumps(
                {"job_id": job_id, "model_uri": model_ref.uri, "report_key": prefix + report.EVALUATION_JSON,
                 "records": records.identity(), "blessed_at": time.time()}).encode(), "application/json")
        return document

    # ------------------------------------------------------------------ compare

    def compare(self, job_a: str, job_b: str, flips_shown: int = compare_mod.DEFAULT_FLIPS_SHOWN) -> dict:
        """Writes comparisons/<job_a>__<job_b>/ (index.html, comparison.json, plots, thumbnails) from the
        two jobs' stored reports and returns the comparison, with its "comparison_uri"."""
        for field, value in (("job_a", job_a), ("job_b", job_b)):
            if not value:
                raise InvalidArgument(field, "is required: the job ids of the two evaluations to compare")
        runs = [self._comparable_run(job_id) for job_id in (job_a, job_b)]
        comparison = compare_mod.compare(runs[0]["evaluation"], runs[1]["evaluation"], runs[0]["predictions"],
                                         runs[1]["predictions"], runs[0]["spec"], runs[1]["spec"])
        prefix = f"{COMPARISONS_PREFIX}{job_a}__{job_b}/"
        comparison["comparison_uri"] = self.store.uri(prefix.rstrip("/")) + "/"
        scratch = self.work_dir / "comparisons" / f"{job_a}__{job_b}"
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            self._flip_thumbnails(comparison, runs[1]["evaluation"], scratch, flips_shown)
            compare_mod.write(scratch, comparison, runs[0]["history"], runs[1]["history"])
            self.store.delete_prefix(prefix)
            files = sorted(p for p in scratch.rglob("*") if p.is_file())
            files.sort(key=lambda p: p.name == compare_mod.COMPARISON_JSON)  # complete once comparison.json is there
            for path in files:
                self.store.put_file(prefix + path.relative_to(scratch).as_posix(), path, _content_type(path))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return comparison

    def _comparable_run(self, job_id: str) -> dict:
        evaluation = self._stored_report(job_id)
        if evaluation is None:
            raise NotFound("evaluation report", job_id)
        predictions = None
        try:
            text = self.store.get_bytes(f"{REPORTS_PREFIX}{job_id}/{predictions_mod.FILE_NAME}").decode("utf-8")
            predictions = predictions_mod.parse(text)
        except ObjectNotFound:
            pass
        except ValueError as exc:
            raise FailedPrecondition(f"job {job_id}: unreadable {predictions_mod.FILE_NAME}: {exc}") from None
        spec: dict = {}
        try:
            job_spec = common_pb2.JobSpec()
            job_spec.ParseFromString(self.store.get_bytes(f"{STATE_PREFIX}{job_id}/spec.pb"))
            spec["job_spec"] = json_format.MessageToDict(job_spec, preserving_proto_field_name=True)
        except ObjectNotFound:
            pass
        model_prefix = self._model_prefix((evaluation.get("model") or {}).get("uri", ""))
        history = None
        if model_prefix is not None:
            spec.update(self._json_object(model_prefix + "config.json", "trained_config") or {})
            history = self._json_object(model_prefix + "history.json")
        return {"evaluation": evaluation, "predictions": predictions, "spec": spec, "history": history}

    def _model_prefix(self, uri: str) -> str | None:
        """The model folder (holding saved_model/, config.json, history.json) of a SavedModel URI."""
        try:
            key = self.store.key_from_uri(uri.rstrip("/")).rstrip("/")
        except InvalidArgument:
            return None
        return key[: -len("saved_model")] if key.endswith("/saved_model") else key + "/"

    def _json_object(self, key: str, wrap: str = ""):
        try:
            value = json.loads(self.store.get_bytes(key))
        except (ObjectNotFound, ValueError):
            return None
        return {wrap: value} if wrap else value

    def _flip_thumbnails(self, comparison: dict, evaluation_b: dict, out_dir: Path, shown: int) -> None:
        """Thumbnails of the flips shown, read once from run B's evaluation records (every flip is one
        of B's images). Skipped with a note when the records are gone or were never named."""
        wanted: dict[str, list[dict]] = {}
        for task in comparison["tasks"]:
            for key in ("right_to_wrong", "wrong_to_right"):
                for flip in (task.get("flips") or {}).get(key, [])[:shown]:
                    wanted.setdefault(flip["source_id"], []).append(flip)
        if not wanted:
            return
        records_uri = evaluation_b.get("records_uri")
        if not records_uri:
            comparison["notes"].append("no thumbnails: run B's report does not name its records")
            return
        try:
            records = self.open_records(self.store, records_uri, self.work_dir / "records-cache",
                                        self.options.batch_size)
            for example in records.examples():
                flips = wanted.pop(example.source_id, None)
                if flips:
                    path = Path("thumbs") / f"{example.source_id[:16]}.png"
                    save_thumbnail(example.encoded, out_dir / path)
                    for flip in flips:
                        flip["thumbnail"] = path.as_posix()
                if not wanted:
                    break
        except ClassforgeError as exc:
            if isinstance(exc, Unavailable):
                raise
            comparison["notes"].append(f"no thumbnails: run B's records {records_uri} cannot be read "
                                       f"({exc.message})")

    def _baseline(self, job_id: str, model_name: str, records, scratch: Path
                  ) -> tuple[blessing.Baseline | None, str]:
        try:
            served = json.loads(self.store.get_bytes(f"{STATE_PREFIX}served/{model_name}.json"))
        except ObjectNotFound:
            return None, f"no model blessed for serving as {model_name!r} yet"
        if served["job_id"] == job_id:
            return None, "this job's own model is the one recorded as served (a re-evaluation)"
        try:
            previous = json.loads(self.store.get_bytes(served["report_key"]))
        except ObjectNotFound:
            previous = None
        if previous is not None and previous.get("records") == records.identity():
            return blessing.Baseline.from_evaluation(served["job_id"], "report", previous["tasks"]), ""
        try:
            model_dir = self._download_model(served["model_uri"], scratch, keras=False)
            result = evaluate(ServingModel(model_dir / "saved_model"), records.examples(), records.tasks, None,
                              Options(batch_size=self.options.batch_size, artefacts=False))
        except USER_ERRORS as exc:
            return None, f"served model of job {served['job_id']} cannot be compared on this split: {exc.message}"
        return blessing.Baseline.from_evaluation(served["job_id"], "rerun", result.tasks), ""

    def _download_model(self, uri: str, target: Path, keras: bool = True) -> Path:
        """Copies the SavedModel (and, with `keras`, model.keras and the files that give its input size)
        to `target`; returns the model folder (holding saved_model/)."""
        try:
            saved_prefix = self.store.key_from_uri(uri.rstrip("/")).rstrip("/") + "/"
        except InvalidArgument as exc:
            raise InvalidArgument("model.uri", exc.message) from None
        if not saved_prefix.endswith("saved_model/"):
            saved_prefix += "saved_model/" if self.store.exists(saved_prefix + "saved_model/saved_model.pb") else ""
        if not self.store.exists(saved_prefix + "saved_model.pb"):
            raise FailedPrecondition(f"no complete SavedModel at {uri}: {saved_prefix}saved_model.pb is missing "
                                     f"(it is uploaded last)")
        for info in self.store.list(saved_prefix):
            self.store.get_file(info.key, target / "saved_model" / info.key[len(saved_prefix):])
        if keras:
            parent = saved_prefix[: -len("saved_model/")]
            for name in (artefacts.KERAS_MODEL, "manifest.json", "config.json"):  # Grad-CAM's model and input size
                if parent and self.store.exists(parent + name):
                    self.store.get_file(parent + name, target / name)
        return target

    def _history(self, history_uri: str) -> list[dict] | None:
        if not history_uri:
            return None
        try:
            return json.loads(self.store.get_bytes(self.store.key_from_uri(history_uri)))
        except (ClassforgeError, ValueError) as exc:
            if isinstance(exc, Unavailable):
                raise
            log.warning("no usable training history", extra={"uri": history_uri, "error": str(exc)})
            return None

    def _stored_report(self, job_id: str) -> dict | None:
        try:
            return json.loads(self.store.get_bytes(f"{REPORTS_PREFIX}{job_id}/{report.EVALUATION_JSON}"))
        except ObjectNotFound:
            return None


def _content_type(path: Path) -> str:
    return {".png": "image/png", ".html": "text/html; charset=utf-8", ".json": "application/json"}.get(
        path.suffix, "application/octet-stream")


def _model_ref(evaluation: dict) -> common_pb2.ModelRef:
    return json_format.ParseDict(evaluation.get("model", {}), common_pb2.ModelRef(), ignore_unknown_fields=True)


def to_proto(evaluation: dict) -> evaluator_service_pb2.EvaluationReport:
    pb = evaluator_service_pb2
    tasks = [pb.TaskMetrics(
        task=t["task"], accuracy=t["accuracy"], balanced_accuracy=t["balanced_accuracy"],
        top_k_accuracy=t["top_k_accuracy"], expected_calibration_error=t["calibration"]["expected_calibration_error"],
        classes=[pb.ClassMetrics(label=c["label"], precision=c["precision"], recall=c["recall"], f1=c["f1"],
                                 support=c["support"]) for c in t["per_class"]])
        for t in evaluation["tasks"]]
    return pb.EvaluationReport(job_id=evaluation["job_id"], model=_model_ref(evaluation), tasks=tasks,
                               blessed=evaluation["blessing"]["blessed"], reasons=evaluation["blessing"]["reasons"],
                               report_uri=evaluation["report_uri"])


def comparison_to_proto(comparison: dict) -> evaluator_service_pb2.CompareEvaluationsResponse:
    pb = evaluator_service_pb2
    tasks = []
    for t in comparison["tasks"]:
        flips = t.get("flips") or {}
        tasks.append(pb.TaskComparison(
            task=t["task"], overall=[pb.MetricChange(metric=name, a=d["a"] or 0.0, b=d["b"] or 0.0,
                                                     delta=d["delta"] or 0.0)
                                     for name, d in t["overall"].items()],
            right_to_wrong=len(flips.get("right_to_wrong", [])), wrong_to_right=len(flips.get("wrong_to_right", [])),
            matched_images=flips.get("matched", 0)))
    test_sets = comparison["test_sets"]
    same = bool(test_sets.get("same_records") or test_sets.get("same_images"))
    return pb.CompareEvaluationsResponse(comparison_uri=comparison["comparison_uri"], same_test_images=same,
                                         tasks=tasks, notes=comparison["notes"])
