"""Classify: image bytes -> PredictionService.Predict on the model server -> top-k labels per task.
No gRPC or HTTP server here; the protocol layers (gRPC Classify, REST, Open Inference Protocol v2 over
REST and gRPC) translate their requests into the calls below and pass each call's remaining deadline in.

One prediction path serves every protocol (`_run`): it checks the images, sends one Predict for the
batch and records the request metrics labelled by protocol. `classify`/`classify_batch` turn its
output tensors into top-k labels; `infer` returns the tensors themselves (v2).

Each image is checked cheaply first (non-empty, within the byte limit, a known image signature, a
header that does not declare more pixels than the limit); an image that still fails the model's
in-graph decode comes back from the model server as INVALID_ARGUMENT and is reported as such, never
as INTERNAL. Label names come from the answering version's assets/labels.json in the model base path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import numpy as np

from classforge.v1 import inference_service_pb2 as pb
from services.common import serving_signature as contract
from services.common.errors import (
    ClassforgeError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    RetryLater,
    Unavailable,
    shown,
)
from services.common.image_headers import declared_size, sniff_format
from services.inference import metrics
from services.inference import tfs_api as tfs
from services.inference.model_server_client import (
    ModelServerClient,
    ModelServerError,
    SignatureInfo,
    TensorInfo,
    VersionStatus,
)
from services.inference.repository import ModelRepository, check_model_name

log = logging.getLogger("classforge.inference")

__all__ = ["Classifier", "MicroBatcher", "ModelMetadata", "Prediction", "Target"]

_DEADLINE_MARGIN = 0.005  # seconds kept for answering after Predict returns
_LABEL_MISSING = "Unrecognized servable version label"
_STATE_NAMES = {value: name for name, value in tfs.State.items()}

# The `protocol` label of the request metrics.
GRPC = "grpc"  # classforge.v1.InferenceService
REST = "rest"  # TF Serving-style REST (/v1/models/...)
V2_REST = "v2_rest"  # Open Inference Protocol v2 over HTTP (/v2/models/...)
V2_GRPC = "v2_grpc"  # Open Inference Protocol v2 over gRPC (inference.GRPCInferenceService)


@dataclass(frozen=True)
class Prediction:
    """The serving contract's output tensors for a batch, in task order (labels.json order, then any other
    task), each task's probabilities before its class ids."""

    model: str
    version: int
    tasks: list[str]
    outputs: dict[str, np.ndarray]


@dataclass(frozen=True)
class ModelMetadata:
    """What the model server says of a model: the version that answers, the loaded versions and the
    serving signature's contract tensors."""

    model: str
    version: int
    versions: list[int]
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]


@dataclass(frozen=True)
class Target:
    """Which version a request asks for: a number, or the serving label, or (neither) the latest."""

    model: str
    version: int = 0
    label: str = ""


class MicroBatcher:
    """Client-side micro-batching: concurrent requests for the same target within `wait_s` (or until
    `max_size` are waiting) go to the model server as one Predict. The first request of a batch sends
    it; the others wait for its answer. A batch that fails with INVALID_ARGUMENT (one bad image fails
    the whole decode) is retried image by image, so only the bad image's caller sees the error.

    The first request waits for company only while a Predict of the same target is in flight (the
    model server is busy, so waiting costs little): when nothing is in flight it is sent at once, so a
    lone caller (concurrency 1) pays no `wait_s`."""

    class _Batch:
        def __init__(self):
            self.images: list[bytes] = []
            self.full = threading.Event()
            self.done = threading.Event()
            self.result: tuple[int, dict[str, np.ndarray]] | None = None
            self.error: BaseException | None = None

    def __init__(self, send: Callable[[Target, list[bytes], float | None], tuple[int, dict[str, np.ndarray]]],
                 max_size: int, wait_s: float):
        self.send, self.max_size, self.wait_s = send, max_size, wait_s
        self._lock = threading.Lock()
        self._open: dict[Target, MicroBatcher._Batch] = {}
        self._in_flight: dict[Target, int] = {}  # Predicts sent and not yet answered, per target

    def predict(self, target: Target, image: bytes, timeout: float | None) -> tuple[int, dict[str, np.ndarray]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            batch = self._open.get(target)
            leader = batch is None
            if leader:
                batch = self._open[target] = MicroBatcher._Batch()
            index = len(batch.images)
            batch.images.append(image)
            if len(batch.images) >= self.max_size:
                self._open.pop(target, None)
                batch.full.set()
        if leader:
            with self._lock:
                busy = self._in_flight.get(target, 0) > 0
            if busy:
                batch.full.wait(self.wait_s if timeout is None else min(self.wait_s, timeout))
            with self._lock:
                if self._open.get(target) is batch:
                    del self._open[target]
                self._in_flight[target] = self._in_flight.get(target, 0) + 1
            try:
                batch.result = self.send(target, batch.images, timeout)
            except BaseException as exc:  # noqa: BLE001 - handed to every member of the batch
                batch.error = exc
            finally:
                with self._lock:
                    self._in_flight[target] -= 1
                    if not self._in_flight[target]:
                        del self._in_flight[target]
                batch.done.set()
        elif not batch.done.wait(timeout):
            raise DeadlineExceeded("deadline exceeded while waiting for the batch's Predict")
        if batch.error is not None:
            left = None if deadline is None else deadline - time.monotonic()
            # One image the model cannot decode fails the whole batch: each image is tried alone, so only the
            # bad image's caller gets the error.
            undecodable = isinstance(batch.error, InvalidArgument) and len(batch.images) > 1
            # The leader's deadline bounded the batch's Predict: a member with time left tries on its own.
            time_left = left is None or left > _DEADLINE_MARGIN
            late = isinstance(batch.error, DeadlineExceeded) and not leader and time_left
            if undecodable or late:
                return self.send(target, [image], left)
            raise batch.error
        version, outputs = batch.result
        return version, {key: value[index:index + 1] for key, value in outputs.items()}


class Classifier:
    def __init__(self, client: ModelServerClient, repo: ModelRepository, *, default_model: str = "classforge",
                 serving_label: str = "stable", default_top_k: int = 5, max_image_bytes: int = 20 * 1024 * 1024,
                 max_image_pixels: int = 50_000_000, max_batch_images: int = 64,
                 predict_timeout: float = 30.0, stream_window: int = 8, batch_max_size: int = 0,
                 batch_wait_ms: float = 2.0, on_label_missing: Callable[[], None] | None = None):
        self.client, self.repo = client, repo
        self.default_model, self.serving_label = default_model, serving_label
        self.default_top_k, self.max_image_bytes = default_top_k, max_image_bytes
        self.max_image_pixels, self.max_batch_images = max_image_pixels, max_batch_images
        self.predict_timeout = predict_timeout
        self.stream_window = max(1, stream_window)
        self.on_label_missing = on_label_missing or (lambda: None)
        self.batcher = MicroBatcher(self._send, batch_max_size, batch_wait_ms / 1000) if batch_max_size > 1 else None
        self._pool = futures.ThreadPoolExecutor(max_workers=max(4, self.stream_window * 2),
                                                thread_name_prefix="inference-stream")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ requests

    def classify(self, request: pb.ClassifyRequest, time_remaining: float | None = None,
                 protocol: str = GRPC) -> pb.ClassifyResponse:
        """One image (gRPC Classify). `time_remaining`: seconds left of the caller's deadline (None: none)."""
        model = request.model_name or self.default_model
        prediction = self._run(model, [request.image], version=request.version, top_k=request.top_k,
                               time_remaining=time_remaining, protocol=protocol)
        return self._response(prediction, 0, request.top_k or self.default_top_k)

    def classify_batch(self, model: str, images: list[bytes], *, version: int = 0, label: str = "", top_k: int = 0,
                       time_remaining: float | None = None, protocol: str = REST) -> list[pb.ClassifyResponse]:
        """Several images in one Predict (REST classify); one response per image, each exactly what Classify
        answers for that image alone. `label` asks for a version label instead of a version."""
        prediction = self._run(model or self.default_model, images, version=version, label=label, top_k=top_k,
                               time_remaining=time_remaining, protocol=protocol)
        return [self._response(prediction, row, top_k or self.default_top_k) for row in range(len(images))]

    def infer(self, model: str, images: list[bytes], *, version: int = 0, outputs: list[str] | None = None,
              time_remaining: float | None = None, protocol: str = V2_REST) -> Prediction:
        """The contract's raw output tensors for a batch of encoded images (Open Inference Protocol v2); only
        `outputs`, in that order, when given."""
        return self._run(model or self.default_model, images, version=version, select=outputs,
                         time_remaining=time_remaining, protocol=protocol)

    def _run(self, model: str, images: list[bytes], *, version: int = 0, label: str = "", top_k: int | None = None,
             select: list[str] | None = None, time_remaining: float | None, protocol: str) -> Prediction:
        started = time.perf_counter()
        version_label = str(version) if version else ""
        try:
            check_model_name(model)
            self._check_options(version, top_k)
            self._check_images(images)
            metrics.IMAGE_BYTES.labels(model).inc(sum(len(image) for image in images))
            timeout = self._timeout(time_remaining)
            target = Target(model, version, label or ("" if version else self.serving_label))
            answered, outputs = self._predict(target, images, timeout)
            version_label = str(answered)
            tasks = self._tasks(model, answered, outputs)
            ordered = {}
            for task in tasks:
                for key in (contract.probabilities_key(task), contract.class_ids_key(task)):
                    if key in outputs:
                        ordered[key] = outputs[key]
            if select:
                ordered = _select(ordered, select, f"{model!r} version {answered}")
            prediction = Prediction(model, answered, tasks, ordered)
        except ClassforgeError as exc:
            metrics.REQUESTS.labels(metrics.model_label(model), version_label, exc.code.name, protocol).inc()
            metrics.ERRORS.labels(exc.code.name, protocol).inc()
            raise
        metrics.REQUESTS.labels(model, version_label, "OK", protocol).inc()
        metrics.IMAGES.labels(model, protocol).inc(len(images))
        metrics.LATENCY.labels(model, version_label, protocol).observe(time.perf_counter() - started)
        return prediction

    def _check_options(self, version: int, top_k: int | None) -> None:
        if top_k is not None and top_k < 0:
            raise InvalidArgument("top_k", f"must be 0 (the default, {self.default_top_k}) or more, got {top_k}")
        if version < 0:
            raise InvalidArgument("version", f"must be 0 (the serving version) or a version number, got {version}")

    def _check_images(self, images: list[bytes]) -> None:
        if not images:
            raise InvalidArgument("batch", "is empty: send at least one image")
        if len(images) > self.max_batch_images:
            raise InvalidArgument("batch", f"{len(images)} images is more than the limit of {self.max_batch_images} "
                                           f"per request (CLASSFORGE_MAX_BATCH_IMAGES); split the request")
        for index, image in enumerate(images):
            self._check_image(image, _field(index, len(images)))

    def _check_image(self, image: bytes, field: str) -> None:
        if not image:
            raise InvalidArgument(field, "is empty: send the encoded image bytes (JPEG, PNG, GIF, BMP or WebP)")
        if len(image) > self.max_image_bytes:
            raise ResourceExhausted(f"{field}: {len(image)} bytes is more than the limit of "
                                    f"{self.max_image_bytes} (CLASSFORGE_MAX_IMAGE_BYTES)")
        if sniff_format(image) is None:
            raise InvalidArgument(field, f"is not a JPEG, PNG, GIF, BMP or WebP image (it starts with "
                                         f"{image[:8].hex(' ')})")
        size = declared_size(image)
        if size is not None and size[0] * size[1] > self.max_image_pixels:
            width, height = size
            raise InvalidArgument(field, f"declares {width}x{height} = {width * height} pixels, more than the limit "
                                         f"of {self.max_image_pixels} (CLASSFORGE_MAX_IMAGE_PIXELS)")

    def _timeout(self, time_remaining: float | None) -> float:
        if time_remaining is None:
            return self.predict_timeout
        if time_remaining <= _DEADLINE_MARGIN:
            raise DeadlineExceeded("the request's deadline passed before Predict could be sent")
        return min(self.predict_timeout, time_remaining - _DEADLINE_MARGIN)

    def _predict(self, target: Target, images: list[bytes], timeout: float) -> tuple[int, dict[str, np.ndarray]]:
        if len(images) == 1:
            if self.batcher is not None:  # may share a Predict with other callers' images
                return self.batcher.predict(target, images[0], timeout)
            return self._send(target, images, timeout)
        deadline = time.monotonic() + timeout
        try:
            return self._send(target, images, timeout)
        except InvalidArgument:
            # One image the model cannot decode fails the whole batch: find it, so the caller learns which.
            for index, image in enumerate(images):
                self._send(target, [image], max(deadline - time.monotonic(), _DEADLINE_MARGIN), f"image[{index}]")
            raise

    def _send(self, target: Target, images: list[bytes], timeout: float | None, field: str = "image"
              ) -> tuple[int, dict[str, np.ndarray]]:
        metrics.BATCH_SIZE.observe(len(images))
        return self._call(target, field, lambda t: self.client.predict(
            t.model, images, version=t.version or None, label=t.label, timeout=timeout, input_key=contract.INPUT_KEY))

    def _call(self, target: Target, field: str, call: Callable[[Target], Any]) -> Any:
        """Runs a model server call for `target`, mapping its errors to domain errors."""
        try:
            return call(target)
        except ModelServerError as exc:
            if target.label and target.label == self.serving_label and _label_missing(exc):
                # The model server has no serving label for this model (restarted, or a model copied in by
                # hand): ask for the config to be re-sent, and answer with its latest version meanwhile.
                self.on_label_missing()
                return self._call(Target(target.model), field, call)
            raise self._map(exc, target, field) from None

    def _map(self, exc: ModelServerError, target: Target, field: str = "image") -> ClassforgeError:
        status, details = exc.status, exc.details
        if status == "INVALID_ARGUMENT" and target.label and _label_missing(exc):
            return NotFound("version label", f"{target.model}/{target.label}")
        if status == "INVALID_ARGUMENT":
            return InvalidArgument(field, f"model {target.model!r} cannot use it: {details}")
        if status == "NOT_FOUND":
            return self._not_found(target)
        if status == "DEADLINE_EXCEEDED":
            return DeadlineExceeded(f"the model server did not answer within the deadline: {details}")
        if status in ("UNAVAILABLE", "CANCELLED"):
            return Unavailable(f"model server {self.client.target} is unavailable: {details}")
        if status == "RESOURCE_EXHAUSTED":
            return ResourceExhausted(f"model server: {details}")
        if status == "FAILED_PRECONDITION":
            return FailedPrecondition(f"model server: {details}")
        log.error("unexpected model server error", extra={"code": status, "details": details})
        return ClassforgeError(f"model server answered {status}: {details}")

    def _not_found(self, target: Target) -> ClassforgeError:
        """The model server has no loaded version for the request. A version published in the model base path
        that is not loaded (yet) is UNAVAILABLE — it is loading, or the model server restarted — not NOT_FOUND;
        its message is written for the caller (RetryLater)."""
        published = self.repo.versions(target.model)
        if target.version:
            if target.version in published:
                return RetryLater(f"model version '{target.model}/{target.version}' is published but the model "
                                   f"server has not loaded it{self._states(target.model)}; retry shortly")
            error = NotFound("model version", f"{target.model}/{target.version}")
            error.message += " (or it is not loaded); `classforge models` lists the versions served"
            return error
        if published:
            return RetryLater(f"model {target.model!r} is published (version(s) {', '.join(map(str, published))}) "
                               f"but the model server has none of them loaded{self._states(target.model)}; "
                               f"retry shortly")
        return NotFound("model", target.model)

    def _states(self, model: str) -> str:
        try:
            known = self.client.status(model, timeout=2.0)
        except ModelServerError:
            return ""
        if not known:
            return " (it does not know the model)"
        return " (" + ", ".join(f"version {s.version}: {_STATE_NAMES.get(s.state, s.state)}"
                                + (f", {s.error}" if s.error else "") for s in known) + ")"

    def _tasks(self, model: str, version: int, outputs) -> list[str]:
        """The tasks of `outputs`, in labels.json order, then any task labels.json does not name."""
        labels = self.repo.labels(model, version)
        found = contract.tasks_in(outputs)
        return [t for t in labels if t in found] + [t for t in found if t not in labels]

    def _response(self, prediction: Prediction, row: int, top_k: int) -> pb.ClassifyResponse:
        labels = self.repo.labels(prediction.model, prediction.version)
        response = pb.ClassifyResponse(model_name=prediction.model, version=prediction.version)
        for task in prediction.tasks:
            probabilities = np.asarray(prediction.outputs[contract.probabilities_key(task)][row]).reshape(-1)
            classes = labels.get(task, [])
            best = np.argsort(-probabilities, kind="stable")[:top_k]
            response.predictions.add(task=task, top=[
                pb.ClassScore(label=classes[i] if i < len(classes) else str(i), class_id=int(i),
                              probability=float(probabilities[i])) for i in best])
        return response

    # ------------------------------------------------------------------ models

    def model_status(self, model: str, version: int = 0, label: str = "") -> list[VersionStatus]:
        """The model server's status of every version of `model`, or of the one `version` or `label` names."""
        check_model_name(model)
        self._check_options(version, None)
        target = Target(model, version, label)
        statuses = self._call(target, "model_spec", lambda t: self.client.status(
            t.model, t.version or None, timeout=self.predict_timeout, label=t.label))
        if not statuses:
            if version:
                raise NotFound("model version", f"{model}/{version}")
            if label:
                raise NotFound("version label", f"{model}/{label}")
            raise NotFound("model", model)
        return statuses

    def model_ready(self, model: str, version: int = 0) -> bool:
        """True when the version (without one: any version, so the serving one) is AVAILABLE. A model or
        version published but unknown to the model server is not ready; one never published is NOT_FOUND."""
        try:
            statuses = self.model_status(model, version)
        except NotFound:
            published = self.repo.versions(model)
            if version in published or (not version and published):
                return False
            raise
        return any(s.state == tfs.State.AVAILABLE for s in statuses)

    def model_metadata(self, model: str, version: int = 0) -> ModelMetadata:
        """The answering version's serving signature (GetModelMetadata), its contract tensors only."""
        check_model_name(model)
        self._check_options(version, None)
        target = Target(model, version, "" if version else self.serving_label)
        signature: SignatureInfo = self._call(target, "model_spec", lambda t: self.client.metadata(
            t.model, version=t.version or None, label=t.label, timeout=self.predict_timeout))
        statuses = self.model_status(model)
        tasks = self._tasks(model, signature.version, signature.outputs)
        outputs = {}
        for task in tasks:
            for key in (contract.probabilities_key(task), contract.class_ids_key(task)):
                if key in signature.outputs:
                    outputs[key] = signature.outputs[key]
        return ModelMetadata(model, signature.version,
                             sorted(s.version for s in statuses if s.state == tfs.State.AVAILABLE),
                             {k: v for k, v in signature.inputs.items() if k == contract.INPUT_KEY}, outputs)

    # ------------------------------------------------------------------ many images

    def classify_stream(self, requests: Iterable[pb.ClassifyRequest],
                        time_remaining: Callable[[], float | None]) -> Iterator[pb.ClassifyResponse]:
        """Answers in request order, with up to `stream_window` images in flight. The first failing image
        ends the stream with its status (gRPC streams carry one final status)."""
        pending: list[futures.Future] = []
        try:
            for request in requests:
                pending.append(self._pool.submit(self.classify, request, time_remaining()))
                while len(pending) >= self.stream_window:
                    yield pending.pop(0).result()
            while pending:
                yield pending.pop(0).result()
        finally:
            for future in pending:
                future.cancel()


def _field(index: int, count: int) -> str:
    """How a message names an image: `image` alone (the same words as Classify), `image[i]` in a batch."""
    return "image" if count == 1 else f"image[{index}]"


def _select(outputs: dict[str, np.ndarray], names: list[str], model: str) -> dict[str, np.ndarray]:
    chosen: dict[str, np.ndarray] = {}
    for index, name in enumerate(names):
        if name not in outputs:
            raise InvalidArgument(f"outputs[{index}].name", f"{shown(name)} is not an output of model {model}; its "
                                                            f"outputs are {', '.join(outputs)}")
        if name in chosen:
            raise InvalidArgument(f"outputs[{index}].name", f"{shown(name)} is requested twice")
        chosen[name] = outputs[name]
    return chosen


def _label_missing(exc: ModelServerError) -> bool:
    return exc.status == "INVALID_ARGUMENT" and _LABEL_MISSING in exc.details
