"""The tfrecords service in one process: gRPC BuildRecords/GetBuild through the shared runtime (error
mapping included) and the dataset_prepared -> records_built event flow on the in-process bus."""

import time

import grpc
import pytest

from classforge.v1 import common_pb2, events_pb2
from classforge.v1 import tfrecords_service_pb2 as pb
from classforge.v1 import tfrecords_service_pb2_grpc as pb_grpc
from services.common.events import InProcessEventBus, new_event
from services.common.grpc_server import GrpcServer
from services.common.records.reader import RecordsReader
from services.common.storage import LocalObjectStore
from services.tfrecords.builder import RecordsBuilder
from services.tfrecords.domain import RecordsDomain
from services.tfrecords.main import SERVICE_NAME
from services.tfrecords.servicer import TFRecordsServicer
from tests.support.sample_dataset import DIGIT_TASKS, digits_items, write_dataset

Status = pb.BuildStatus


@pytest.fixture
def store(tmp_path):
    store = LocalObjectStore(tmp_path / "store")
    items = digits_items(40, tasks=2)
    write_dataset(store, "digits", {"train": items[:30], "val": items[30:]}, DIGIT_TASKS)
    write_dataset(store, "half", {"train": items[:3]}, DIGIT_TASKS, complete=False)
    return store


@pytest.fixture
def bus():
    bus = InProcessEventBus(backoff_s=0.01, outage_window_s=0.5)
    yield bus
    bus.close()


@pytest.fixture
def domain(store, bus):
    domain = RecordsDomain(store, bus, RecordsBuilder(workers=1), min_shards=2)
    yield domain
    domain.close()


@pytest.fixture
def stub(domain):
    server = GrpcServer("tfrecords-test", port=0, host="127.0.0.1", grace_seconds=1, plaintext=True)
    server.add_service(pb_grpc.add_TFRecordsServiceServicer_to_server, TFRecordsServicer(domain), SERVICE_NAME)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield pb_grpc.TFRecordsServiceStub(channel)
    channel.close()
    server.stop()


def _wait(stub, build_id, timeout=30.0) -> pb.Build:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        build = stub.GetBuild(pb.GetBuildRequest(build_id=build_id), timeout=5).build
        if build.status != Status.BUILD_STATUS_RUNNING:
            return build
        time.sleep(0.05)
    raise AssertionError(f"build {build_id} still running after {timeout}s")


def test_build_records_then_poll_get_build(stub, store):
    started = stub.BuildRecords(pb.BuildRecordsRequest(dataset_id="digits"), timeout=5).build
    assert started.status in (Status.BUILD_STATUS_RUNNING, Status.BUILD_STATUS_SUCCEEDED)
    assert started.build_id.startswith("digits-") and started.dataset_id == "digits"
    build = _wait(stub, started.build_id)
    assert build.status == Status.BUILD_STATUS_SUCCEEDED, build.error
    assert (build.train_examples, build.val_examples, build.shard_count) == (30, 10, 4)
    assert build.records_uri == store.uri(f"records/{build.build_id}")
    assert RecordsReader(store, build.records_uri).num_examples("val") == 10

    again = stub.BuildRecords(pb.BuildRecordsRequest(dataset_id="digits"), timeout=5).build
    assert again == build  # finished: answered from the manifest, nothing rebuilt
    other = stub.BuildRecords(pb.BuildRecordsRequest(
        dataset_id="digits", options=pb.RecordsOptions(max_side=8, jpeg_quality=70)), timeout=5).build
    assert other.build_id != build.build_id
    assert _wait(stub, other.build_id).status == Status.BUILD_STATUS_SUCCEEDED


@pytest.mark.parametrize("request_, code, text", [
    (pb.BuildRecordsRequest(), grpc.StatusCode.INVALID_ARGUMENT, "dataset_id: is required"),
    (pb.BuildRecordsRequest(dataset_id="../x"), grpc.StatusCode.INVALID_ARGUMENT, "dataset_id: '../x' is not"),
    (pb.BuildRecordsRequest(dataset_id="digits", options=pb.RecordsOptions(jpeg_quality=80)),
     grpc.StatusCode.INVALID_ARGUMENT, "options.jpeg_quality"),
    (pb.BuildRecordsRequest(dataset_id="digits", options=pb.RecordsOptions(shard_bytes=3)),
     grpc.StatusCode.INVALID_ARGUMENT, "options.shard_bytes"),
    (pb.BuildRecordsRequest(dataset_id="nope"), grpc.StatusCode.NOT_FOUND, "dataset 'nope' not found"),
    (pb.BuildRecordsRequest(dataset_id="half"), grpc.StatusCode.FAILED_PRECONDITION,
     "'half' is incomplete: datasets/half/manifest.json is missing"),
])
def test_build_records_errors(stub, request_, code, text):
    with pytest.raises(grpc.RpcError) as caught:
        stub.BuildRecords(request_, timeout=5)
    assert caught.value.code() == code and text in caught.value.details()


def test_get_build_errors(stub):
    for build_id, code, text in [("", grpc.StatusCode.INVALID_ARGUMENT, "build_id: is required"),
                                 ("x/y", grpc.StatusCode.INVALID_ARGUMENT, "build_id: 'x/y' is not a build id"),
                                 ("digits-0123456789", grpc.StatusCode.NOT_FOUND, "build 'digits-0123456789'")]:
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetBuild(pb.GetBuildRequest(build_id=build_id), timeout=5)
        assert caught.value.code() == code and text in caught.value.details()


def test_a_build_that_fails_on_the_data_reports_failed_with_the_reason(stub, store):
    store.put_bytes("datasets/digits/val.list", b"images/00/nothing.png 1 1\n")
    build_id = stub.BuildRecords(pb.BuildRecordsRequest(dataset_id="digits"), timeout=5).build.build_id
    build = _wait(stub, build_id)
    assert build.status == Status.BUILD_STATUS_FAILED
    assert "lists images that are not stored: images/00/nothing.png" in build.error


def prepared(job_id, dataset_id):
    return new_event(job_id, "ingest", dataset_prepared=events_pb2.DatasetPrepared(
        dataset=common_pb2.DatasetRef(dataset_id=dataset_id)))


def test_dataset_prepared_builds_and_publishes_records_built_once_per_job(domain, bus, store):
    seen = []
    bus.subscribe("observer", seen.append, kinds=["records_built", "stage_failed"])
    bus.subscribe("tfrecords", domain.handle_event, kinds=["dataset_prepared"])
    bus.publish(prepared("job-1", "digits"))
    bus.drain(30)
    assert [e.WhichOneof("payload") for e in seen] == ["records_built"]
    built = seen[0].records_built
    assert (seen[0].job_id, seen[0].producer, built.dataset_id) == ("job-1", "tfrecords", "digits")
    assert (built.train_examples, built.val_examples) == (30, 10)
    assert RecordsReader(store, built.records_uri).num_examples("train") == 30

    bus.publish(prepared("job-1", "digits"))  # redelivered: a new event id, the same job
    bus.publish(prepared("job-2", "digits"))  # another job on the same dataset: no rebuild, its own answer
    bus.drain(30)
    assert [(e.job_id, e.WhichOneof("payload")) for e in seen] == [("job-1", "records_built"),
                                                                    ("job-2", "records_built")]
    assert seen[1].records_built.records_uri == built.records_uri


def test_a_dataset_problem_becomes_stage_failed_and_the_handler_returns(domain, bus):
    seen = []
    bus.subscribe("observer", seen.append, kinds=["records_built", "stage_failed"])
    bus.subscribe("tfrecords", domain.handle_event, kinds=["dataset_prepared"])
    bus.publish(prepared("job-3", "half"))
    bus.publish(prepared("job-4", ""))
    bus.drain(30)
    assert [e.WhichOneof("payload") for e in seen] == ["stage_failed", "stage_failed"]
    assert all(e.stage_failed.stage == common_pb2.JOB_STAGE_RECORDS for e in seen)
    assert "'half' is incomplete" in seen[0].stage_failed.message
    assert "dataset_prepared.dataset.dataset_id: is required" in seen[1].stage_failed.message
    assert bus.dead_letters() == []


def test_an_unexpected_error_is_raised_for_the_bus_to_retry(domain, store, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("store exploded")

    monkeypatch.setattr(domain.builder, "build", broken)
    with pytest.raises(RuntimeError, match="store exploded"):
        domain.handle_event(prepared("job-5", "digits"))
    assert not store.exists(domain.marker_key("job-5"))  # nothing answered: the retry builds


def test_marker_keys_are_safe_for_any_job_id():
    assert RecordsDomain.marker_key("6f1c1e0e-55a4") == "state/tfrecords/jobs/6f1c1e0e-55a4.json"
    odd = RecordsDomain.marker_key("../../etc")
    assert odd.startswith("state/tfrecords/jobs/~") and ".." not in odd
