"""Cost of the shared gRPC runtime (error-mapping and metrics interceptors, health) per call:
GetJob through services.common.grpc_server.GrpcServer against the same servicer on a bare
grpc.server, same process, same client, measured back to back."""

from __future__ import annotations

import tempfile
import time
from concurrent import futures

import grpc

from bench.table import Row
from classforge.v1 import common_pb2
from classforge.v1 import jobs_service_pb2 as pb
from classforge.v1 import jobs_service_pb2_grpc as pb_grpc
from services.common.events import InProcessEventBus
from services.common.grpc_server import GrpcServer
from services.common.storage import LocalObjectStore
from services.jobs.domain import JobsDomain
from services.jobs.main import SERVICE_NAME
from services.jobs.servicer import JobsServicer

CALLS = 2000


def _calls_per_second(port: int, job_id: str) -> float:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.JobsServiceStub(channel)
        request = pb.GetJobRequest(job_id=job_id)
        for _ in range(100):  # warm up the connection and both code paths
            stub.GetJob(request)
        started = time.perf_counter()
        for _ in range(CALLS):
            stub.GetJob(request)
        return CALLS / (time.perf_counter() - started)


def run() -> list[Row]:
    with tempfile.TemporaryDirectory() as root:
        bus = InProcessEventBus()
        domain = JobsDomain(bus, LocalObjectStore(root))
        job_id = domain.submit(common_pb2.JobSpec(source=common_pb2.DataSource(local_path="/data"))).job_id
        servicer = JobsServicer(domain)

        bare = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        pb_grpc.add_JobsServiceServicer_to_server(servicer, bare)
        bare_port = bare.add_insecure_port("127.0.0.1:0")
        bare.start()
        ours = GrpcServer("bench", port=0, host="127.0.0.1", grace_seconds=1, plaintext=True)
        ours.add_service(pb_grpc.add_JobsServiceServicer_to_server, servicer, SERVICE_NAME)
        ours.start()
        try:
            # Interleave to spread machine noise evenly over both sides.
            bare_rates, our_rates = [], []
            for _ in range(3):
                bare_rates.append(_calls_per_second(bare_port, job_id))
                our_rates.append(_calls_per_second(ours.port, job_id))
        finally:
            bare.stop(0)
            ours.stop()
            bus.close()
    return [Row("runtime", "unary calls/s through interceptors", max(our_rates),
                "bare grpc.server, same servicer", max(bare_rates), "/s", target=0.9)]
