"""The ingest servicer through a real gRPC server (the shared GrpcServer with its error mapping) on a
loopback port, over a local object store: status codes and messages a person can act on."""

import io
import json

import grpc
import pytest
from PIL import Image

from classforge.v1 import common_pb2
from classforge.v1 import ingest_service_pb2 as pb
from classforge.v1 import ingest_service_pb2_grpc as pb_grpc
from services.common.grpc_server import GrpcServer, wait_until_serving
from services.common.storage import LocalObjectStore
from services.ingest import cli
from services.ingest.domain import IngestDomain
from services.ingest.main import SERVICE_NAME
from services.ingest.options import SourceLimits
from services.ingest.servicer import IngestServicer
from tests.archives import tar_gz


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 12), (value, 255 - value, value // 2)).save(buffer, "PNG")
    return buffer.getvalue()


GOOD = {f"{label}/{i}.png": png(i * 3 + k) for k, label in enumerate(("cat", "dog")) for i in range(20)}


def upload(data: bytes, chunk: int = 1000, **header_fields):
    header = pb.CreateDatasetHeader(archive_format=pb.ARCHIVE_FORMAT_TAR_GZ, **header_fields)
    yield pb.CreateDatasetRequest(header=header)
    for i in range(0, len(data), chunk):
        yield pb.CreateDatasetRequest(chunk=data[i:i + chunk])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = LocalObjectStore(tmp_path_factory.mktemp("store"))
    server = GrpcServer("ingest-test", port=0, host="127.0.0.1", grace_seconds=1, plaintext=True)
    domain = IngestDomain(store, limits=SourceLimits(max_upload_bytes=200_000))
    server.add_service(pb_grpc.add_IngestServiceServicer_to_server, IngestServicer(domain), SERVICE_NAME)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    wait_until_serving(channel, timeout=10)
    yield pb_grpc.IngestServiceStub(channel), f"127.0.0.1:{server.port}"
    channel.close()
    server.stop()


@pytest.fixture
def stub(server):
    return server[0]


def error(call, *args) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=30)
    return caught.value


def test_upload_get_list_and_report(stub):
    files = {**GOOD, "cat/empty.png": b"", "dog/../../escape.png": png(7)}
    options = common_pb2.DatasetOptions(val_fraction=0.2, seed=3)
    dataset = stub.CreateDataset(upload(tar_gz(files), request_id="svc-1", options=options), timeout=30).dataset
    assert dataset.image_count == 40 and dataset.val_count == 8 and dataset.rejected_count == 2
    assert list(dataset.ref.tasks) == ["label"] and dataset.ref.uri.startswith("file://")
    got = stub.GetDataset(pb.GetDatasetRequest(dataset_id=dataset.ref.dataset_id), timeout=10).dataset
    assert got == dataset
    listed = stub.ListDatasets(pb.ListDatasetsRequest(), timeout=10).datasets
    assert dataset.ref.dataset_id in [d.ref.dataset_id for d in listed]
    reply = stub.GetDatasetReport(pb.GetDatasetReportRequest(dataset_id=dataset.ref.dataset_id), timeout=10)
    assert {r.path: r.reason.split(":")[0] for r in reply.report.rejected} == {
        "cat/empty.png": "empty-file", "dog/../../escape.png": "unsafe-path"}
    assert {(s.label, s.count, s.val_count) for s in reply.report.labels} == {("cat", 20, 4), ("dog", 20, 4)}
    assert "| cat |" in reply.markdown
    again = stub.CreateDataset(upload(tar_gz(files), request_id="svc-1", options=options), timeout=30)
    assert again.dataset == dataset


def test_invalid_argument_names_the_field(stub):
    exc = error(stub.CreateDataset, upload(tar_gz(GOOD), options=common_pb2.DatasetOptions(val_fraction=1.5)))
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert exc.details().startswith("header.options.val_fraction: must be in [0, 1)")
    exc = error(stub.CreateDataset, iter([pb.CreateDatasetRequest(chunk=b"abc")]))
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and exc.details().startswith("header:")
    exc = error(stub.CreateDataset, iter([pb.CreateDatasetRequest(header=pb.CreateDatasetHeader()),
                                          pb.CreateDatasetRequest(header=pb.CreateDatasetHeader())]))
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "header.archive_format" in exc.details()
    exc = error(stub.GetDataset, pb.GetDatasetRequest())
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and exc.details() == "dataset_id: is required"
    exc = error(stub.ListDatasets, pb.ListDatasetsRequest(page_token="x"))
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and exc.details().startswith("page_token")


def test_not_found_names_the_id(stub):
    for call, request in ((stub.GetDataset, pb.GetDatasetRequest(dataset_id="ds-unknown")),
                          (stub.GetDatasetReport, pb.GetDatasetReportRequest(dataset_id="ds-unknown"))):
        exc = error(call, request)
        assert exc.code() == grpc.StatusCode.NOT_FOUND and exc.details() == "dataset 'ds-unknown' not found"


def test_failed_precondition_for_an_empty_dataset_or_an_imageless_label(stub):
    exc = error(stub.CreateDataset, upload(tar_gz({"cat/a.png": b"", "dog/b.png": b"text"})))
    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION and "empty" in exc.details()
    broken = {**GOOD, **{f"bird/{i}.png": png(i)[:25] for i in range(3)}}
    exc = error(stub.CreateDataset, upload(tar_gz(broken)))
    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'bird' (3 files rejected: corrupt 3)" in exc.details()


def test_resource_exhausted_beyond_the_upload_limit(stub):
    big = {f"{label}/{i}.bin": bytes(range(256)) * 40 + i.to_bytes(4, "big") for label in "ab" for i in range(40)}
    data = tar_gz(big) + bytes(250_000)
    exc = error(stub.CreateDataset, upload(data, chunk=64 * 1024))
    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "200000 bytes" in exc.details()


def test_the_cli_uploads_a_folder_and_reads_datasets_back(server, tmp_path, capsys):
    _, address = server
    for name, data in GOOD.items():
        (tmp_path / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "photos" / name).write_bytes(data)
    assert cli.main(["--json", "dataset", "upload", str(tmp_path / "photos"), "--ingest", address, "--plaintext",
                     "--seed", "4", "--request-id", "cli-1"]) == 0
    uploaded = json.loads(capsys.readouterr().out)
    dataset_id = uploaded["ref"]["dataset_id"]
    assert uploaded["image_count"] == "40" and uploaded["ref"]["tasks"] == ["label"]
    assert cli.main(["dataset", "list", "--ingest", address, "--plaintext"]) == 0
    assert dataset_id in capsys.readouterr().out
    assert cli.main(["dataset", "report", dataset_id, "--ingest", address, "--plaintext"]) == 0
    assert "| cat |" in capsys.readouterr().out
    assert cli.main(["dataset", "show", "ds-none", "--ingest", address, "--plaintext"]) == 1
    assert "NOT_FOUND: dataset 'ds-none' not found" in capsys.readouterr().err
