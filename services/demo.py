"""`make demo` until the pipeline services land: runs the jobs service against the local Kafka,
MinIO and Prometheus, submits a job over gRPC, and shows each hop — the Kafka event, the job
state the service folded from it, and the request counter Prometheus scraped.

The full pipeline demo (`classforge run` on Fashion-MNIST) replaces this with issue #8.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import grpc
from google.protobuf import json_format
from kafka import KafkaConsumer, TopicPartition

from classforge.v1 import common_pb2, events_pb2
from classforge.v1 import jobs_service_pb2 as pb
from classforge.v1 import jobs_service_pb2_grpc as pb_grpc
from services.common.events import EVENTS_TOPIC
from services.common.grpc_server import wait_until_serving

INFRA = {
    "CLASSFORGE_KAFKA_BOOTSTRAP": "127.0.0.1:19092",
    "CLASSFORGE_S3_ENDPOINT": "127.0.0.1:19000",
    "CLASSFORGE_S3_ACCESS_KEY": "classforge",
    "CLASSFORGE_S3_SECRET_KEY": "classforge-secret",
}
PROMETHEUS = "http://127.0.0.1:19090"


def prometheus_value(query: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        url = f"{PROMETHEUS}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
        result = json.load(urllib.request.urlopen(url, timeout=5))["data"]["result"]
        if result:
            return result[0]["value"][1]
        time.sleep(0.5)
    return "(not scraped yet)"


def main() -> int:
    env = {**os.environ, **INFRA}
    service = subprocess.Popen([sys.executable, "-m", "services.jobs.main"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        channel = grpc.insecure_channel("127.0.0.1:50051")
        print("starting the jobs service (gRPC :50051, metrics :9101) …")
        wait_until_serving(channel, timeout=120)
        consumer = KafkaConsumer(bootstrap_servers=INFRA["CLASSFORGE_KAFKA_BOOTSTRAP"], consumer_timeout_ms=1000)
        partitions = [TopicPartition(EVENTS_TOPIC, p) for p in consumer.partitions_for_topic(EVENTS_TOPIC) or [0]]
        consumer.assign(partitions)
        consumer.seek_to_end()
        spec = common_pb2.JobSpec(display_name="demo", source=common_pb2.DataSource(object_prefix="uploads/demo/"),
                                  dataset=common_pb2.DatasetOptions(max_class_ratio=5, val_fraction=0.1))
        job_id = pb_grpc.JobsServiceStub(channel).SubmitJob(pb.SubmitJobRequest(spec=spec), timeout=10).job_id
        print(f"\n1. SubmitJob over gRPC -> job {job_id}")
        for record in consumer:
            if record.key == job_id.encode():
                event = events_pb2.Event.FromString(record.value)
                print(f"2. Kafka {EVENTS_TOPIC} partition {record.partition} offset {record.offset}: "
                      f"{event.WhichOneof('payload')} from {event.producer} (event {event.event_id})")
                break
        job = pb_grpc.JobsServiceStub(channel).GetJob(pb.GetJobRequest(job_id=job_id), timeout=10).job
        state = json_format.MessageToDict(job, preserving_proto_field_name=True)
        print(f"3. GetJob: status {state['status']}, stage {state['stage']}")
        value = prometheus_value('classforge_grpc_requests_total{job="jobs",method="SubmitJob",code="OK"}')
        print(f"4. Prometheus: classforge_grpc_requests_total{{method=\"SubmitJob\",code=\"OK\"}} = {value}")
        print("\nThe local infrastructure keeps running; `make infra-down` stops it.")
        return 0
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(30)


if __name__ == "__main__":
    sys.exit(main())
