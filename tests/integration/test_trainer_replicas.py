"""Two trainer replicas in one consumer group on the real Kafka and MinIO, three jobs, then one replica
killed with SIGKILL (kill -9) mid-training: every job completes exactly once (one training_completed
each), the killed replica's jobs are taken over from their last checkpoint when its lease expires, and
each model prefix holds checkpoints written in order, each by the lease holder of its time."""

import json
import time
import uuid

import grpc
import pytest

from classforge.v1 import common_pb2, events_pb2
from classforge.v1 import trainer_service_pb2 as pb
from classforge.v1 import trainer_service_pb2_grpc as pb_grpc
from services.common.events import new_event
from services.common.events.kafka import KafkaBusConfig, KafkaEventBus
from services.common.grpc_server import wait_until_serving
from services.common.storage.minio import MinioObjectStore
from tests.integration.kafka_topic import positioned_consumer, topics

pytestmark = pytest.mark.integration

REPLICAS = {"r1": (50074, 9174), "r2": (50075, 9175)}
LEASE_SECONDS = 4


def test_two_replicas_train_three_jobs_once_each_through_a_kill_9(infra, start_service, tmp_path):
    from tests.support import sample_dataset

    bucket = f"it-replicas-{uuid.uuid4().hex[:8]}"
    store = MinioObjectStore(infra["CLASSFORGE_S3_ENDPOINT"], infra["CLASSFORGE_S3_ACCESS_KEY"],
                             infra["CLASSFORGE_S3_SECRET_KEY"], bucket)
    records = sample_dataset.small_digits_records(store)

    services, channels = {}, {}
    for name, (grpc_port, metrics_port) in REPLICAS.items():
        env = {**infra, "CLASSFORGE_S3_BUCKET": bucket, "CLASSFORGE_GRPC_PORT": str(grpc_port),
               "CLASSFORGE_METRICS_PORT": str(metrics_port), "CLASSFORGE_GRACE_SECONDS": "5",
               "CLASSFORGE_TRAINER_WORK_DIR": str(tmp_path / f"work-{name}"),
               "CLASSFORGE_TRAINER_PROGRESS_SECONDS": "0.5", "CLASSFORGE_TRAINER_REPLICA_ID": name,
               "CLASSFORGE_TRAINER_LEASE_SECONDS": str(LEASE_SECONDS)}
        services[name] = start_service("trainer", env)
        channels[name] = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    for name, channel in channels.items():
        try:
            wait_until_serving(channel, timeout=180)
        except TimeoutError:
            pytest.fail(f"trainer {name} never became SERVING:\n{services[name].log()[-5000:]}")
    consumer = positioned_consumer(infra)
    bus = KafkaEventBus(KafkaBusConfig(infra["CLASSFORGE_KAFKA_BOOTSTRAP"], client_id="it-replicas",
                                       **topics(infra)))

    # Long enough (several seconds per job on a loaded 2-core machine) to be killed mid-run.
    training = common_pb2.TrainingConfig(
        input_size=16, batch_size=16, backbone=common_pb2.BACKBONE_SMALL_CNN, width_multiplier=0.25,
        full_stage=common_pb2.TrainingStage(epochs=8, learning_rate=0.05),
        augmentation=common_pb2.Augmentation(brightness=0.1))
    spec = common_pb2.JobSpec(source=common_pb2.DataSource(dataset_id="digits"), training=training)
    jobs = [f"it-{uuid.uuid4().hex[:12]}" for _ in range(3)]
    for job_id in jobs:
        bus.publish(new_event(job_id, "jobs", job_submitted=events_pb2.JobSubmitted(spec=spec)))
        bus.publish(new_event(job_id, "tfrecords", records_built=events_pb2.RecordsBuilt(
            dataset_id="digits", records_uri=store.uri(records.prefix), train_examples=192, val_examples=48)))

    seen: list[events_pb2.Event] = []

    def read_events() -> None:
        for record in consumer:
            event = events_pb2.Event.FromString(record.value)
            if event.job_id in jobs:
                seen.append(event)

    def lease(job_id: str) -> dict | None:
        key = f"state/trainer/{job_id}/lease.json"
        return json.loads(store.get_bytes(key)) if store.exists(key) else None

    def logs() -> str:
        return "\n".join(f"--- {name}\n{service.log()[-4000:]}" for name, service in services.items())

    # Kill the replica training a job once that job has a checkpoint and is still mid-run.
    victim, victim_job, deadline = None, None, time.monotonic() + 240
    while victim is None:
        assert time.monotonic() < deadline, f"no job reached a checkpoint mid-run\n{logs()}"
        read_events()
        for job_id in jobs:
            held = lease(job_id)
            if held and not held["done"] and store.exists(f"models/{job_id}/checkpoints/latest.json") \
                    and not store.exists(f"models/{job_id}/manifest.json"):
                victim, victim_job = held["holder"], job_id
                break
    services[victim].proc.kill()  # SIGKILL: no final checkpoint, no lease release
    services[victim].proc.wait()
    survivor = next(name for name in REPLICAS if name != victim)

    deadline = time.monotonic() + 300
    while not all(lease(job_id) and lease(job_id)["done"] for job_id in jobs):
        assert time.monotonic() < deadline, f"not every job ended\n{logs()}"
        assert services[survivor].alive(), services[survivor].log()[-5000:]
        read_events()
    read_events()  # up to the end of the topic: a duplicate would be here by now

    kinds = {job_id: [e.WhichOneof("payload") for e in seen if e.job_id == job_id] for job_id in jobs}
    for job_id in jobs:
        assert kinds[job_id].count("training_completed") == 1, f"{job_id}: {kinds[job_id]}\n{logs()}"
        assert "stage_failed" not in kinds[job_id], f"{job_id}: {kinds[job_id]}\n{logs()}"
        assert store.exists(f"models/{job_id}/manifest.json")
        assert lease(job_id)["holder"] == (survivor if job_id == victim_job else lease(job_id)["holder"])
        # The checkpoints left are in training order, and so are their writers' fencing tokens: no
        # checkpoint of the dead replica came after one of its successor's.
        names = sorted({info.key.split("/")[3] for info in store.list(f"models/{job_id}/checkpoints/")
                        if info.key.count("/") == 4})
        assert names, job_id
        states = [json.loads(store.get_bytes(f"models/{job_id}/checkpoints/{n}/state.json")) for n in names]
        writers = [json.loads(store.get_bytes(f"models/{job_id}/checkpoints/{n}/writer.json")) for n in names]
        steps = [(s["stage"], s["epoch"], s["step_in_epoch"]) for s in states]
        assert steps == sorted(steps) and len(set(steps)) == len(steps), (job_id, names, steps)
        tokens = [w["token"] for w in writers]
        assert tokens == sorted(tokens), (job_id, names, writers)
    taken = lease(victim_job)
    assert taken["holder"] == survivor and taken["token"] >= 2, taken
    # The survivor continued the killed replica's run from its checkpoint, not from scratch.
    manifest = json.loads(store.get_bytes(f"models/{victim_job}/manifest.json"))
    assert manifest["resumed_from"], manifest
    stub = pb_grpc.TrainerServiceStub(channels[survivor])
    for job_id in jobs:  # the survivor answers for every job, from the store
        got = stub.GetTraining(pb.GetTrainingRequest(job_id=job_id), timeout=10).training
        assert got.status == pb.TRAINING_STATUS_SUCCEEDED, (job_id, got)
    assert services[survivor].terminate() == 0, services[survivor].log()[-5000:]
    bus.close()
    consumer.close()
    for channel in channels.values():
        channel.close()
