"""Classify through the inference service against Predict sent straight to the model server, same
images, same client harness, same run (issue #7: p50 overhead <= 10%, throughput >= 0.9x).

Harness (a documented Python one, no ghz): the model server stand-in (services.model_server) and the
inference service (its servicer, Classifier and Publisher on the shared GrpcServer; no Kafka or MinIO,
which Classify does not touch) each run as their own process on 127.0.0.1 and serve the models below.
This process is the client: at concurrency C, C threads share one channel and send a fixed number of
requests (a bounded run, after a warm-up); latency is measured per call, throughput is calls / wall time.
Direct and through-the-service runs alternate per concurrency level, so machine noise falls on both.
Models: two toy SavedModels of the contract (tests.support.toy_model), and the network
`make demo` trains (its serving graph, untrained weights) on 28x28 images like Fashion-MNIST's.

    .venv/bin/python -m bench.inference           # prints the table of this benchmark only
    .venv/bin/python -m bench.inference --models demo
    CLASSFORGE_BATCH_MAX_SIZE=8 .venv/bin/python -m bench.inference   # the service's settings in TUNING apply
    .venv/bin/python -m bench.inference --load    # load: 32 threads for 60 s over every protocol (inference_load.py)
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from bench.table import Row, machine, render
from classforge.v1 import inference_service_pb2 as pb
from classforge.v1 import inference_service_pb2_grpc as pb_grpc
from services.common import serving_signature as contract
from services.common.grpc_server import wait_until_serving
from services.inference import tfs_api as tfs
from tests.support import toy_model

LEVELS = {1: 300, 8: 800, 32: 960}  # concurrency -> requests per measured run
WARMUP = 50
# The inference service's settings a bench run may set in its environment, to measure their effect.
TUNING = ("CLASSFORGE_WORKER_THREADS", "CLASSFORGE_BATCH_MAX_SIZE", "CLASSFORGE_BATCH_WAIT_MS")
DEMO_IMAGE_SIDE = 28  # Fashion-MNIST


def _export_demo_model(directory: Path) -> Path:
    """The network `make demo` trains and serves (the trainer's CPU recipe for small images, the 10 Fashion-MNIST
    classes), exported by the trainer's own export: the same serving graph, untrained weights (the time of a
    Predict does not depend on them)."""
    from services.demo_data import FASHION_MNIST_CLASSES
    from services.trainer.backbones import build_network
    from services.trainer.config import cpu_recipe_small_images
    from services.trainer.data import tasks_from_labels
    from services.trainer.export import export_saved_model

    config = cpu_recipe_small_images()
    labels = {"tasks": [{"name": "label", "classes": list(FASHION_MNIST_CLASSES)}]}
    network = build_network(config, tasks_from_labels(labels, config))
    return export_saved_model(network, config.input_size, labels, directory)


# name -> (writes the SavedModel to a directory, test image side, what it stands for)
MODELS = {
    "tiny": (lambda d: toy_model.build(d, seed=1), 32, "8x8 linear model, Predict ~1 ms: the worst case for the hop"),
    "cnn": (lambda d: toy_model.build(d, seed=1, size=96, conv_channels=32), 32,
            "two 3x3 convolutions at 96x96, a small CNN"),
    "demo": (_export_demo_model, DEMO_IMAGE_SIDE, "the model make demo serves (trainer's small-image CPU recipe)"),
}
REPO_ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(call, concurrency: int, total: int) -> tuple[np.ndarray, float]:
    """Sends `total` calls from `concurrency` threads; returns per-call latencies (s) and wall time (s)."""
    latencies = np.zeros(total)
    counter = iter(range(total))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker():
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            started = time.perf_counter()
            try:
                call(index)
            except Exception as exc:  # noqa: BLE001 - reported after the run
                errors.append(exc)
                return
            latencies[index] = time.perf_counter() - started

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} calls failed, first: {errors[0]}")
    return latencies, wall


def _serve_inference(args) -> int:
    """The inference service without Kafka and MinIO (bench only)."""
    from classforge.v1 import inference_service_pb2_grpc
    from services.common.events import InProcessEventBus
    from services.common.grpc_server import GrpcServer
    from services.common.logs import configure_logging
    from services.common.storage import LocalObjectStore
    from services.inference.main import SERVICE_NAME, build_domain
    from services.inference.servicer import InferenceServicer
    from services.inference.settings import InferenceSettings

    configure_logging("inference-bench", "WARNING")
    tuning = {k: v for k, v in os.environ.items() if k in TUNING}  # the rest of the environment is not the bench's
    settings = InferenceSettings.load(environ=tuning, kafka_bootstrap="-", s3_endpoint="-", s3_access_key="-",
                                      s3_secret_key="-", model_base_path=args.base, model_server=args.model_server,
                                      grpc_plaintext=True)  # the bench measures loopback calls, without TLS
    with tempfile.TemporaryDirectory() as state:
        domain = build_domain(settings, LocalObjectStore(state), InProcessEventBus())
        server = GrpcServer("inference", port=args.port, host="127.0.0.1", grace_seconds=1, plaintext=True,
                            worker_threads=settings.worker_threads, recheck_seconds=1,
                            readiness_checks={"model_server": domain.check_model_server})
        server.on_ready(domain.start)  # no periodic reconcile: the bench's model server never restarts
        server.add_service(inference_service_pb2_grpc.add_InferenceServiceServicer_to_server,
                           InferenceServicer(domain), SERVICE_NAME)
        server.on_stop(domain.close)
        server.start()
        server.serve_until_signalled()
    return 0


def _serve_floor(args) -> int:
    """The floor: the fewest Python steps a forwarding hop can take (grpc.aio on both sides, no image checks,
    no metrics, no interceptors, top-k straight from the response's float_val). Not a product: it shows what
    any Python service in front of the model server costs on this machine, whatever its code."""
    import asyncio

    async def serve() -> None:
        upstream = grpc.aio.insecure_channel(args.model_server)
        predict = tfs.prediction_service_pb2_grpc.PredictionServiceStub(upstream).Predict

        class Floor(pb_grpc.InferenceServiceServicer):
            async def Classify(self, request, context):
                forward = tfs.predict_pb2.PredictRequest()
                forward.model_spec.name = request.model_name
                forward.model_spec.version_label = "stable"
                forward.inputs[contract.INPUT_KEY].CopyFrom(tfs.string_tensor([request.image]))
                answer = await predict(forward, timeout=context.time_remaining())
                response = pb.ClassifyResponse(model_name=request.model_name, version=answer.model_spec.version.value)
                for key, tensor in answer.outputs.items():
                    if key.startswith(contract.PROBABILITIES_PREFIX):
                        scores = tensor.float_val
                        best = sorted(range(len(scores)), key=lambda i: -scores[i])[:request.top_k]
                        response.predictions.add(task=key.removeprefix(contract.PROBABILITIES_PREFIX), top=[
                            pb.ClassScore(label=str(i), class_id=i, probability=scores[i]) for i in best])
                return response

        server = grpc.aio.server()
        pb_grpc.add_InferenceServiceServicer_to_server(Floor(), server)
        server.add_insecure_port(f"127.0.0.1:{args.port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(serve())
    return 0


def run(models: list[str] | None = None) -> list[Row]:
    models = models or list(MODELS)
    with tempfile.TemporaryDirectory() as root:
        base = Path(root) / "models"
        for name in models:
            MODELS[name][0](base / name / "1")
        server_port, inference_port, floor_port = _free_port(), _free_port(), _free_port()
        env = {**os.environ, "CLASSFORGE_LOG_LEVEL": "WARNING", "CLASSFORGE_METRICS_PORT": "-1",
               "CLASSFORGE_MODEL_BASE_PATH": str(base), "TF_CPP_MIN_LOG_LEVEL": "2",
               # Loopback processes of the bench: plaintext and no auth, said explicitly.
               "CLASSFORGE_GRPC_PLAINTEXT": "true", "CLASSFORGE_AUTH_DISABLED": "true"}
        processes = [
            subprocess.Popen([sys.executable, "-m", "services.model_server.main"], cwd=REPO_ROOT,
                             env={**env, "CLASSFORGE_GRPC_PORT": str(server_port)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            subprocess.Popen([sys.executable, "-m", "bench.inference", "serve-inference", "--port", str(inference_port),
                              "--base", str(base), "--model-server", f"127.0.0.1:{server_port}"], cwd=REPO_ROOT,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            subprocess.Popen([sys.executable, "-m", "bench.inference", "serve-floor", "--port", str(floor_port),
                              "--model-server", f"127.0.0.1:{server_port}"], cwd=REPO_ROOT,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        ]
        try:
            return _measure(server_port, inference_port, floor_port, models)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(30)


def _measure(server_port: int, inference_port: int, floor_port: int, models: list[str]) -> list[Row]:
    direct = grpc.insecure_channel(f"127.0.0.1:{server_port}")
    ours = grpc.insecure_channel(f"127.0.0.1:{inference_port}")
    floor = grpc.insecure_channel(f"127.0.0.1:{floor_port}")
    wait_until_serving(direct, timeout=120)
    wait_until_serving(ours, timeout=120)  # its start pushed the `stable` labels the floor asks for
    grpc.channel_ready_future(floor).result(timeout=120)
    rows = []
    for model in models:
        rows += _measure_model(direct, ours, floor, model)
    for channel in (direct, ours, floor):
        channel.close()
    return rows


def _measure_model(direct: grpc.Channel, ours: grpc.Channel, floor: grpc.Channel, model: str) -> list[Row]:
    side = MODELS[model][1]
    images = [toy_model.png(side, side, seed=i) for i in range(16)]
    predict = tfs.prediction_service_pb2_grpc.PredictionServiceStub(direct).Predict
    classify = pb_grpc.InferenceServiceStub(ours).Classify
    classify_floor = pb_grpc.InferenceServiceStub(floor).Classify
    predict_requests = []
    for image in images:
        request = tfs.predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.version_label = "stable"  # what Classify asks for
        request.inputs["image_bytes"].CopyFrom(tfs.string_tensor([image]))
        predict_requests.append(request)
    classify_requests = [pb.ClassifyRequest(image=image, model_name=model, top_k=3) for image in images]

    def call_predict(i):
        predict(predict_requests[i % len(images)], timeout=30)

    def call_classify(i):
        classify(classify_requests[i % len(images)], timeout=30)

    def call_floor(i):
        classify_floor(classify_requests[i % len(images)], timeout=30)

    rows = []
    for concurrency, total in LEVELS.items():
        total = total if model == "tiny" else total // 4
        for call in (call_predict, call_classify, call_floor):
            _run(call, concurrency, WARMUP)
        base_lat, base_wall = _run(call_predict, concurrency, total)
        our_lat, our_wall = _run(call_classify, concurrency, total)
        floor_lat, floor_wall = _run(call_floor, concurrency, total)
        rows += [
            Row("inference", f"{model} p50 latency c={concurrency}", float(np.percentile(our_lat, 50) * 1000),
                "Predict straight to the model server", float(np.percentile(base_lat, 50) * 1000), "ms",
                higher_is_better=False, target=1.1),
            Row("inference", f"{model} p99 latency c={concurrency}", float(np.percentile(our_lat, 99) * 1000),
                "Predict straight to the model server", float(np.percentile(base_lat, 99) * 1000), "ms",
                higher_is_better=False),
            Row("inference", f"{model} throughput c={concurrency}", total / our_wall,
                "Predict straight to the model server", total / base_wall, "/s", target=0.9),
            # The floor against the same baseline: how much of the ratio any Python hop costs here.
            Row("inference", f"{model} floor p50 c={concurrency}", float(np.percentile(floor_lat, 50) * 1000),
                "Predict straight (floor: bare grpc.aio forwarder)", float(np.percentile(base_lat, 50) * 1000), "ms",
                higher_is_better=False),
            Row("inference", f"{model} floor throughput c={concurrency}", total / floor_wall,
                "Predict straight (floor: bare grpc.aio forwarder)", total / base_wall, "/s"),
        ]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.inference")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve-inference")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--base", required=True)
    serve.add_argument("--model-server", required=True)
    floor = sub.add_parser("serve-floor")
    floor.add_argument("--port", type=int, required=True)
    floor.add_argument("--model-server", required=True)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), help="only these models (default: all)")
    parser.add_argument("--load", action="store_true",
                        help="the load run of bench/inference_load.py instead of the overhead table")
    parser.add_argument("--seconds", type=float, default=60.0, help="--load: how long to send")
    parser.add_argument("--concurrency", type=int, default=32, help="--load: client threads, split over protocols")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="--load: stop after this many calls")
    args = parser.parse_args(argv)
    if args.command == "serve-inference":
        return _serve_inference(args)
    if args.command == "serve-floor":
        return _serve_floor(args)
    if args.load:
        from bench.inference_load import run_load

        result = run_load(args.seconds, args.concurrency, args.max_requests)
        print(result.render())
        return 0 if result.passed else 1
    print(render(run(args.models)))
    print(machine())
    return 0


if __name__ == "__main__":
    sys.exit(main())
