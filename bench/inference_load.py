"""Load on the inference service (issue #18, item 6): `python -m bench.inference --load`.

The in-process stack of the inference tests (tests/inference_stack.py: the model-server stand-in over real
gRPC, the Classifier, the inference service's gRPC server and its uvicorn HTTP server, all on 127.0.0.1)
serving the toy SavedModel. `concurrency` client threads (default 32) send for `seconds` (default 60), split
evenly over four protocols: gRPC Classify, REST `:classify`, and Open Inference Protocol v2 `infer` over REST
and over gRPC. Bounded in time (the deadline, plus a 10 s timeout per call) and in count (`max_requests`).

Every answer is checked, not only its status: Classify (gRPC and REST) must equal the gRPC answer taken
before the run for the same image, and v2 must return the same top class per task. A failed call or a wrong
answer is an error; the command exits 1 when there is any, or when a protocol got no call. Latency is per
call, p50 and p99 per protocol.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import json_format

from classforge.third_party.kserve import grpc_predict_v2_pb2 as v2pb
from classforge.v1 import inference_service_pb2 as pb
from tests.support import toy_model

PROTOCOLS = ("grpc classify", "rest classify", "v2 rest infer", "v2 grpc infer")
MODEL = "toy"
TOP_K = 3
CALL_TIMEOUT_S = 10.0
KEPT_ERROR_MESSAGES = 5
V2_DTYPES = {"FP32": "<f4", "INT64": "<i8"}


@dataclass
class Tally:
    """What one protocol's calls did (appended to from its worker threads)."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    messages: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, seconds: float, error: str | None) -> None:
        with self.lock:
            self.latencies.append(seconds)
            if error is not None:
                self.errors += 1
                if len(self.messages) < KEPT_ERROR_MESSAGES:
                    self.messages.append(error)


@dataclass
class LoadResult:
    seconds: float  # wall time of the run
    concurrency: int
    tallies: dict[str, Tally]

    @property
    def errors(self) -> int:
        return sum(t.errors for t in self.tallies.values())

    @property
    def passed(self) -> bool:
        """No call failed, and every protocol was called."""
        return self.errors == 0 and all(t.latencies for t in self.tallies.values())

    def rows(self) -> list[dict]:
        rows = []
        for protocol, tally in self.tallies.items():
            latencies = np.asarray(tally.latencies) * 1000
            rows.append({"protocol": protocol, "requests": len(latencies), "errors": tally.errors,
                         "p50_ms": float(np.percentile(latencies, 50)) if len(latencies) else float("nan"),
                         "p99_ms": float(np.percentile(latencies, 99)) if len(latencies) else float("nan"),
                         "per_second": len(latencies) / self.seconds if self.seconds else 0.0})
        return rows

    def render(self) -> str:
        lines = [f"load: {self.concurrency} threads for {self.seconds:.1f} s, split over {len(self.tallies)} "
                 f"protocols; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}",
                 f"{'protocol':<16} {'requests':>9} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}"]
        for r in self.rows():
            lines.append(f"{r['protocol']:<16} {r['requests']:>9} {r['errors']:>7} {r['p50_ms']:>8.2f} "
                         f"{r['p99_ms']:>8.2f} {r['per_second']:>8.1f}")
        for protocol, tally in self.tallies.items():
            lines += [f"  {protocol} error: {message}" for message in tally.messages]
        return "\n".join(lines)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _top_classes(reference: pb.ClassifyResponse) -> dict[str, int]:
    return {p.task: p.top[0].class_id for p in reference.predictions}


class Clients:
    """One call per protocol, `call(image_index) -> None`, raising on a failed call or a wrong answer."""

    def __init__(self, stack, images: list[bytes]):
        self.stack, self.images = stack, images
        self.port = int(stack.url.rsplit(":", 1)[1])
        self.references = [stack.classify(image, model_name=MODEL, top_k=TOP_K) for image in images]
        self.tops = [_top_classes(r) for r in self.references]
        self.rest_bodies = [json.dumps({"instances": [{"b64": _b64(i)}], "top_k": TOP_K}).encode() for i in images]
        self.v2_bodies = [json.dumps({"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                                                  "data": [_b64(i)]}]}).encode() for i in images]
        self.classify_requests = [pb.ClassifyRequest(image=i, model_name=MODEL, top_k=TOP_K) for i in images]
        self.v2_requests = []
        for image in images:
            request = v2pb.ModelInferRequest(model_name=MODEL)
            request.inputs.add(name="image_bytes", datatype="BYTES", shape=[1]).contents.bytes_contents.append(image)
            self.v2_requests.append(request)

    def factory(self, protocol: str) -> Callable[[int], None]:
        """A call for one worker thread (the REST ones keep their own HTTP connection)."""
        if protocol == "grpc classify":
            return self._grpc_classify
        if protocol == "v2 grpc infer":
            return self._v2_grpc
        connection = _Connection(self.port)
        if protocol == "rest classify":
            return lambda i: self._rest_classify(connection, i)
        return lambda i: self._v2_rest(connection, i)

    def _grpc_classify(self, i: int) -> None:
        answer = self.stack.stub.Classify(self.classify_requests[i], timeout=CALL_TIMEOUT_S)
        if answer != self.references[i]:
            raise AssertionError(f"image {i}: Classify answered {answer} instead of {self.references[i]}")

    def _rest_classify(self, connection: _Connection, i: int) -> None:
        body = connection.post(f"/v1/models/{MODEL}:classify", self.rest_bodies[i])
        (result,) = body["results"]
        answer = json_format.ParseDict(result, pb.ClassifyResponse())
        if answer != self.references[i]:
            raise AssertionError(f"image {i}: REST classify answered {result} instead of the gRPC answer")

    def _v2_rest(self, connection: _Connection, i: int) -> None:
        body = connection.post(f"/v2/models/{MODEL}/infer", self.v2_bodies[i])
        self._check_v2(i, {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in body["outputs"]})

    def _v2_grpc(self, i: int) -> None:
        answer = self.stack.v2.ModelInfer(self.v2_requests[i], timeout=CALL_TIMEOUT_S)
        self._check_v2(i, {o.name: np.frombuffer(raw, V2_DTYPES[o.datatype]).reshape(list(o.shape))
                           for o, raw in zip(answer.outputs, answer.raw_output_contents, strict=True)})

    def _check_v2(self, i: int, tensors: dict[str, np.ndarray]) -> None:
        got = {task: int(tensors[f"class_ids_{task}"][0]) for task in self.tops[i]}
        if got != self.tops[i]:
            raise AssertionError(f"image {i}: v2 infer answered classes {got} instead of {self.tops[i]}")


class _Connection:
    """A keep-alive HTTP/1.1 connection to the service's REST port, reopened after a failure."""

    def __init__(self, port: int):
        self.port = port
        self.connection: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes) -> dict:
        if self.connection is None:
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=CALL_TIMEOUT_S)
        try:
            self.connection.request("POST", path, body, {"Content-Type": "application/json"})
            reply = self.connection.getresponse()
            data = reply.read()
        except (OSError, http.client.HTTPException):
            self.connection.close()
            self.connection = None
            raise
        if reply.status != 200:
            raise AssertionError(f"POST {path}: HTTP {reply.status} {data[:300]!r}")
        return json.loads(data)


def _run(clients: Clients, concurrency: int, seconds: float, max_requests: int) -> LoadResult:
    tallies = {p: Tally() for p in PROTOCOLS}
    remaining = [max_requests]
    budget = threading.Lock()
    deadline = time.perf_counter() + seconds

    def take() -> bool:
        with budget:
            remaining[0] -= 1
            return remaining[0] >= 0

    def worker(index: int) -> None:
        protocol = PROTOCOLS[index % len(PROTOCOLS)]
        call, tally = clients.factory(protocol), tallies[protocol]
        image = index
        while time.perf_counter() < deadline and take():
            image = (image + 1) % len(clients.images)
            started = time.perf_counter()
            try:
                call(image)
                error = None
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                error = f"{type(exc).__name__}: {exc}"[:500]
            tally.record(time.perf_counter() - started, error)

    threads = [threading.Thread(target=worker, args=(i,), name=f"load-{i}") for i in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return LoadResult(time.perf_counter() - started, concurrency, tallies)


def run_load(seconds: float = 60.0, concurrency: int = 32, max_requests: int = 1_000_000) -> LoadResult:
    """Starts the in-process stack, publishes the toy model, sends the load, stops the stack."""
    from tests.inference_stack import Stack, build_exports

    if concurrency < len(PROTOCOLS):
        raise ValueError(f"concurrency must be at least {len(PROTOCOLS)}: one thread per protocol")
    with tempfile.TemporaryDirectory() as root:
        stack = Stack(Path(root), build_exports(Path(root) / "exports", seeds=(1,)))
        try:
            stack.publish("job-load", 1, model=MODEL)
            images = [toy_model.png(32, 32, seed=s) for s in range(8)] + [toy_model.jpeg(40, 30, seed=9)]
            return _run(Clients(stack, images), concurrency, seconds, max_requests)
        finally:
            stack.close()
