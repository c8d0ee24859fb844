"""Classify: image bytes -> PredictionService.Predict on the model server -> top-k labels per task.
No gRPC server here; the servicer passes each call's remaining deadline in.

The request's image is checked cheaply first (non-empty, within the size limit, a known image
signature); an image that still fails the model's in-graph decode comes back from the model server as
INVALID_ARGUMENT and is reported as such, never as INTERNAL. Label names come from the answering
version's assets/labels.json in the model base path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
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
    Unavailable,
)
from services.inference import metrics
from services.inference.model_server_client import ModelServerClient
from services.inference.repository import ModelRepository, check_model_name

log = logging.getLogger("classforge.inference")

_SIGNATURES = [
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
]
_DEADLINE_MARGIN = 0.005  # seconds kept for answering after Predict returns
_LABEL_MISSING = "Unrecognized servable version label"


def sniff_image(data: bytes) -> str | None:
    """The image format from its first bytes (JPEG, PNG, GIF, BMP, WebP), or None."""
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


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
    the whole decode) is retried image by image, so only the bad image's caller sees the error."""

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

    def predict(self, target: Target, image: bytes, timeout: float | None) -> tuple[int, dict[str, np.ndarray]]:
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
            batch.full.wait(self.wait_s if timeout is None else min(self.wait_s, timeout))
            with self._lock:
                if self._open.get(target) is batch:
                    del self._open[target]
            try:
                metrics.BATCH_SIZE.observe(len(batch.images))
                batch.result = self.send(target, batch.images, timeout)
            except BaseException as exc:  # noqa: BLE001 - handed to every member of the batch
                batch.error = exc
            finally:
                batch.done.set()
        elif not batch.done.wait(timeout):
            raise DeadlineExceeded("deadline exceeded while waiting for the batch's Predict")
        if batch.error is not None:
            if isinstance(batch.error, InvalidArgument) and len(batch.images) > 1:
                return self.send(target, [image], timeout)
            raise batch.error
        version, outputs = batch.result
        return version, {key: value[index:index + 1] for key, value in outputs.items()}


class Classifier:
    def __init__(self, client: ModelServerClient, repo: ModelRepository, *, default_model: str = "classforge",
                 serving_label: str = "stable", default_top_k: int = 5, max_image_bytes: int = 20 * 1024 * 1024,
                 predict_timeout: float = 30.0, stream_window: int = 8, batch_max_size: int = 0,
                 batch_wait_ms: float = 2.0, on_label_missing: Callable[[], None] | None = None):
        self.client, self.repo = client, repo
        self.default_model, self.serving_label = default_model, serving_label
        self.default_top_k, self.max_image_bytes = default_top_k, max_image_bytes
        self.predict_timeout = predict_timeout
        self.stream_window = max(1, stream_window)
        self.on_label_missing = on_label_missing or (lambda: None)
        self.batcher = MicroBatcher(self._send, batch_max_size, batch_wait_ms / 1000) if batch_max_size > 1 else None
        self._pool = futures.ThreadPoolExecutor(max_workers=max(4, self.stream_window * 2),
                                                thread_name_prefix="inference-stream")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ one image

    def classify(self, request: pb.ClassifyRequest, time_remaining: float | None = None) -> pb.ClassifyResponse:
        """`time_remaining`: seconds left of the caller's deadline (None: no deadline)."""
        started = time.perf_counter()
        model = request.model_name or self.default_model
        version_label = str(request.version) if request.version else ""
        try:
            check_model_name(model)
            self._check(request)
            metrics.IMAGE_BYTES.labels(model).inc(len(request.image))
            timeout = self._timeout(time_remaining)
            target = Target(model, request.version, "" if request.version else self.serving_label)
            answered, outputs = self._predict(target, request.image, timeout)
            version_label = str(answered)
            response = self._response(model, answered, outputs, request.top_k or self.default_top_k)
        except ClassforgeError as exc:
            metrics.REQUESTS.labels(model, version_label, exc.code.name).inc()
            metrics.ERRORS.labels(exc.code.name).inc()
            raise
        metrics.REQUESTS.labels(model, version_label, "OK").inc()
        metrics.LATENCY.labels(model, version_label).observe(time.perf_counter() - started)
        return response

    def _check(self, request: pb.ClassifyRequest) -> None:
        if request.top_k < 0:
            raise InvalidArgument("top_k", f"must be 0 (the default, {self.default_top_k}) or more, "
                                           f"got {request.top_k}")
        if request.version < 0:
            raise InvalidArgument("version", f"must be 0 (the serving version) or a version number, got "
                                             f"{request.version}")
        if not request.image:
            raise InvalidArgument("image", "is empty: send the encoded image bytes (JPEG, PNG, GIF, BMP or WebP)")
        if len(request.image) > self.max_image_bytes:
            raise ResourceExhausted(f"image: {len(request.image)} bytes is more than the limit of "
                                    f"{self.max_image_bytes} (CLASSFORGE_MAX_IMAGE_BYTES)")
        if sniff_image(request.image) is None:
            raise InvalidArgument("image", f"is not a JPEG, PNG, GIF, BMP or WebP image (it starts with "
                                           f"{request.image[:8].hex(' ')})")

    def _timeout(self, time_remaining: float | None) -> float:
        if time_remaining is None:
            return self.predict_timeout
        if time_remaining <= _DEADLINE_MARGIN:
            raise DeadlineExceeded("the request's deadline passed before Predict could be sent")
        return min(self.predict_timeout, time_remaining - _DEADLINE_MARGIN)

    def _predict(self, target: Target, image: bytes, timeout: float) -> tuple[int, dict[str, np.ndarray]]:
        if self.batcher is not None:
            return self.batcher.predict(target, image, timeout)
        return self._send(target, [image], timeout)

    def _send(self, target: Target, images: list[bytes], timeout: float | None
              ) -> tuple[int, dict[str, np.ndarray]]:
        try:
            return self.client.predict(target.model, images, version=target.version or None, label=target.label,
                                       timeout=timeout, input_key=contract.INPUT_KEY)
        except grpc.RpcError as exc:
            if target.label and exc.code() == grpc.StatusCode.INVALID_ARGUMENT and _LABEL_MISSING in (
                    exc.details() or ""):
                # The model server has no serving label for this model (restarted, or a model copied in by
                # hand): ask for the config to be re-sent, and answer with its latest version meanwhile.
                self.on_label_missing()
                return self._send(Target(target.model), images, timeout)
            raise self._map(exc, target) from None

    def _map(self, exc: grpc.RpcError, target: Target) -> ClassforgeError:
        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidArgument("image", f"model {target.model!r} cannot use it: {details}")
        if code == grpc.StatusCode.NOT_FOUND:
            if target.version:
                error = NotFound("model version", f"{target.model}/{target.version}")
                error.message += " (or it is not loaded); `classforge models` lists the versions served"
                return error
            return NotFound("model", target.model)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(f"the model server did not answer within the deadline: {details}")
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            return Unavailable(f"model server {self.client.target} is unavailable: {details}")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return ResourceExhausted(f"model server: {details}")
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            return FailedPrecondition(f"model server: {details}")
        log.error("unexpected model server error", extra={"code": code.name, "details": details})
        return ClassforgeError(f"model server answered {code.name}: {details}")

    def _response(self, model: str, version: int, outputs: dict[str, np.ndarray], top_k: int) -> pb.ClassifyResponse:
        labels = self.repo.labels(model, version)
        found = contract.tasks_in(outputs)
        tasks = [t for t in labels if t in found] + [t for t in found if t not in labels]
        response = pb.ClassifyResponse(model_name=model, version=version)
        for task in tasks:
            probabilities = np.asarray(outputs[contract.probabilities_key(task)]).reshape(-1)
            classes = labels.get(task, [])
            best = np.argsort(-probabilities, kind="stable")[:top_k]
            response.predictions.add(task=task, top=[
                pb.ClassScore(label=classes[i] if i < len(classes) else str(i), class_id=int(i),
                              probability=float(probabilities[i])) for i in best])
        return response

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
