"""IngestDomain over a local object store and the in-process bus: the dataset layout (manifest last),
idempotency by dataset id, errors naming the field or id, and the job_submitted flow."""

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client import REGISTRY

from classforge.v1 import common_pb2, events_pb2
from classforge.v1 import ingest_service_pb2 as pb
from services.common.dataset_options import IngestOptions
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from services.common.events import InProcessEventBus, new_event
from services.common.stage_work import Cancellations
from services.common.storage import LocalObjectStore
from services.demo_data import load_digits
from services.ingest.domain import IngestDomain
from services.ingest.options import SourceLimits
from tests.archives import tar_gz


class RecordingStore(LocalObjectStore):
    """Remembers the order keys were written in."""

    def __init__(self, root):
        super().__init__(root)
        self.writes: list[str] = []

    def put_bytes(self, key, data, content_type="application/octet-stream"):
        self.writes.append(key)
        return super().put_bytes(key, data, content_type)

    def put_file(self, key, path, content_type="application/octet-stream"):
        self.writes.append(key)
        return super().put_file(key, path, content_type)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def digit_files() -> dict[str, bytes]:
    """12 images per digit as '<digit>/<index>.png'."""
    images, labels, names = load_digits()
    files, seen = {}, {}
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        if seen.get(int(label), 0) < 12:
            seen[int(label)] = seen.get(int(label), 0) + 1
            files[f"{names[label]}/{index:05d}.png"] = png(image)
    return files


def chunks(data: bytes, size: int = 4096):
    return [data[i:i + size] for i in range(0, len(data), size)]


def header(request_id: str = "", **options) -> pb.CreateDatasetHeader:
    return pb.CreateDatasetHeader(options=common_pb2.DatasetOptions(**options),
                                  archive_format=pb.ARCHIVE_FORMAT_TAR_GZ, request_id=request_id)


def messy_upload(digit_files: dict[str, bytes]) -> dict[str, bytes]:
    files = dict(digit_files)
    six = next(name for name in files if name.startswith("6/"))
    eight = next(name for name in files if name.startswith("8/"))
    nine = next(name for name in files if name.startswith("9/"))
    files.update({
        "3/empty.png": b"",
        "4/truncated.png": files[nine][:40],
        "5/notes.png": b"not an image at all",
        "6/copy.png": files[six],  # duplicate, same label
        "7/mislabelled.png": files[eight],  # same content as an 8: conflict
        "../escape.png": files[nine],
    })
    return files


@pytest.fixture
def store(tmp_path):
    return RecordingStore(tmp_path / "store")


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_an_upload_becomes_the_dataset_layout_with_the_manifest_last(store, digit_files):
    domain = IngestDomain(store)
    before = {outcome: metric("classforge_ingest_images_total", outcome=outcome)
              for outcome in ("valid", "corrupt", "empty-file", "not-an-image")}
    prepared_before = metric("classforge_ingest_datasets_total", result="prepared")
    dataset = domain.create(header(val_fraction=0.25, seed=5), chunks(tar_gz(messy_upload(digit_files))))
    assert {outcome: metric("classforge_ingest_images_total", outcome=outcome) - n
            for outcome, n in before.items()} == {"valid": 122, "corrupt": 1, "empty-file": 1, "not-an-image": 1}
    assert metric("classforge_ingest_datasets_total", result="prepared") == prepared_before + 1
    assert metric("classforge_ingest_prepare_duration_seconds_count") >= 1
    dataset_id = dataset.ref.dataset_id
    prefix = f"datasets/{dataset_id}/"
    assert dataset_id.startswith("ds-") and dataset.ref.uri == store.uri(f"datasets/{dataset_id}")
    assert list(dataset.ref.tasks) == ["label"]

    # the manifest is the last object of the dataset (the listing index entry follows it)
    assert store.writes[-2] == prefix + "manifest.json" and store.writes[-1].startswith("state/ingest/datasets/")
    assert all(key.startswith(prefix + "images/") for key in store.writes[:119])

    labels = json.loads(store.get_bytes(prefix + "labels.json"))
    assert labels == {"tasks": [{"name": "label", "classes": [str(d) for d in range(10)]}]}
    lines = {name: store.get_bytes(prefix + name).decode().splitlines() for name in ("train.list", "val.list",
                                                                                   "test.list")}
    assert lines["test.list"] == []
    stored = {info.key[len(prefix):] for info in store.list(prefix + "images/")}
    assert len(stored) == dataset.image_count == 119  # 120 digits, less the one with two labels
    for rows in lines.values():
        for row in rows:
            path, label = row.split(" ")
            assert path in stored and 0 <= int(label) <= 9
            sha = path.rsplit("/", 1)[1].split(".")[0]
            assert hashlib.sha256(store.get_bytes(prefix + path)).hexdigest() == sha and path[7:9] == sha[:2]
    val_paths = {row.split()[0] for row in lines["val.list"]}
    assert not val_paths & {row.split()[0] for row in lines["train.list"]}
    assert len(lines["val.list"]) == dataset.val_count == 30  # round(0.25 * 12 or 11) = 3 per class
    manifest = json.loads(store.get_bytes(prefix + "manifest.json"))
    for name in ("train.list", "val.list", "labels.json", "report.json", "report.md"):
        assert manifest["files"][name]["sha256"] == hashlib.sha256(store.get_bytes(prefix + name)).hexdigest()
    assert manifest["options"]["val_fraction"] == 0.25 and manifest["options"]["max_class_ratio"] == 5.0
    assert manifest["source"]["kind"] == "upload" and manifest["counts"]["rejected"] == dataset.rejected_count == 7

    report, markdown = domain.report(dataset_id)
    reasons = {r.path: r.reason.split(":")[0] for r in report.rejected}
    assert reasons == {"3/empty.png": "empty-file", "4/truncated.png": "corrupt", "5/notes.png": "not-an-image",
                       "6/copy.png": "duplicate", "7/mislabelled.png": "label-conflict",
                       next(n for n in digit_files if n.startswith("8/")): "label-conflict",
                       "../escape.png": "unsafe-path"}
    assert report.duplicate_count == 1 and report.label_conflict_count == 1
    by_label = {s.label: s for s in report.labels}
    assert by_label["8"].count == 11 and by_label["6"].count == 12
    assert sum(s.val_count for s in report.labels) == 30
    assert "## Rejected files" in markdown and "label-conflict" in markdown
    assert domain.get(dataset_id) == dataset
    assert [d.ref.dataset_id for d in domain.list()[0]] == [dataset_id]


def test_a_request_id_makes_create_idempotent(store, digit_files):
    domain = IngestDomain(store)
    archive = tar_gz(digit_files)
    first = domain.create(header("req-1", seed=1), chunks(archive))
    written = len(store.writes)
    again = domain.create(header("req-1", seed=1), chunks(archive))
    assert again == first
    repacked = io.BytesIO()
    with zipfile.ZipFile(repacked, "w") as zf:  # the same files in another archive: the same upload
        for name, data in digit_files.items():
            zf.writestr(name, data)
    retried = pb.CreateDatasetHeader(options=common_pb2.DatasetOptions(seed=1), request_id="req-1",
                                     archive_format=pb.ARCHIVE_FORMAT_ZIP)
    assert domain.create(retried, chunks(repacked.getvalue())) == first
    assert not [k for k in store.writes[written:] if k.startswith("datasets/")]  # nothing rebuilt
    with pytest.raises(InvalidArgument, match="already used") as caught:
        domain.create(header("req-1", seed=2), chunks(archive))
    assert caught.value.field == "header.request_id"
    other = domain.create(header("req-2", seed=1), chunks(archive))
    assert other.ref.dataset_id != first.ref.dataset_id


def test_an_incomplete_dataset_is_rebuilt_from_scratch(store, digit_files):
    domain = IngestDomain(store)
    dataset_id = domain.dataset_id_for_request("req-x")
    store.put_bytes(f"datasets/{dataset_id}/images/zz/leftover.png", b"from a crashed build")
    dataset = domain.create(header("req-x"), chunks(tar_gz(digit_files)))
    assert dataset.ref.dataset_id == dataset_id
    assert not store.exists(f"datasets/{dataset_id}/images/zz/leftover.png")


@pytest.mark.parametrize(("request_header", "field"), [
    (header(val_fraction=1.5), "header.options.val_fraction"),
    (header(val_fraction=0.6, test_fraction=0.5), "header.options.test_fraction"),
    (header(max_class_ratio=0.5), "header.options.max_class_ratio"),
    (header(min_side=-1), "header.options.min_side"),
    (pb.CreateDatasetHeader(), "header.archive_format"),
    (pb.CreateDatasetHeader(archive_format=pb.ARCHIVE_FORMAT_ZIP,
                            source=common_pb2.DataSource(object_prefix="x/")), "header.source"),
    (pb.CreateDatasetHeader(archive_format=pb.ARCHIVE_FORMAT_ZIP, source=common_pb2.DataSource(list_file="../l")),
     "header.source.list_file"),
])
def test_bad_requests_name_the_field(store, request_header, field):
    with pytest.raises(InvalidArgument) as caught:
        IngestDomain(store).create(request_header, [b"x"])
    assert caught.value.field == field and caught.value.message.startswith(field)


def test_upload_limits_and_stream_shape(store, digit_files):
    domain = IngestDomain(store, limits=SourceLimits(max_upload_bytes=10_000))
    with pytest.raises(ResourceExhausted, match="larger than the limit of 10000"):
        domain.create(header(), chunks(tar_gz(digit_files)))
    with pytest.raises(InvalidArgument, match="no archive bytes") as caught:
        domain.create(header(), [])
    assert caught.value.field == "chunk"
    named = pb.CreateDatasetHeader(source=common_pb2.DataSource(object_prefix="uploads/x/"))
    with pytest.raises(InvalidArgument, match="no archive chunks") as caught:
        domain.create(named, [b"stray"])
    with pytest.raises(InvalidArgument) as caught:
        IngestDomain(store).create(pb.CreateDatasetHeader(archive_format=pb.ARCHIVE_FORMAT_ZIP),
                                   [tar_gz(digit_files)])
    assert caught.value.field == "header.archive_format" and "looks like tar.gz" in caught.value.message


def test_unknown_ids_and_sources_are_not_found(store, tmp_path):
    domain = IngestDomain(store)
    with pytest.raises(NotFound, match="dataset 'ds-nope' not found"):
        domain.get("ds-nope")
    with pytest.raises(NotFound, match="ds-nope"):
        domain.report("ds-nope")
    with pytest.raises(InvalidArgument) as caught:
        domain.get("../etc")
    assert caught.value.field == "dataset_id"
    with pytest.raises(NotFound, match="object prefix 'uploads/none/' not found"):
        domain.create(pb.CreateDatasetHeader(source=common_pb2.DataSource(object_prefix="uploads/none")), [])
    with pytest.raises(NotFound, match="ds-gone"):
        domain.create(pb.CreateDatasetHeader(source=common_pb2.DataSource(dataset_id="ds-gone")), [])
    # A missing path is NotFound only inside the allowed roots (outside: test_ingest_confine.py).
    fenced = IngestDomain(store, local_roots=[tmp_path])
    with pytest.raises(NotFound, match="folder, list file or archive .*no. not found"):
        fenced.create(pb.CreateDatasetHeader(source=common_pb2.DataSource(local_path=str(tmp_path / "no"))), [])


def test_data_that_allows_no_dataset_is_a_failed_precondition(store, digit_files):
    domain = IngestDomain(store)
    broken = dict(digit_files)
    for name in [n for n in broken if n.startswith("3/")]:
        broken[name] = broken[name][:30]
    with pytest.raises(FailedPrecondition, match=r"'3' \(12 files rejected: corrupt 12\)"):
        domain.create(header(), chunks(tar_gz(broken)))
    with pytest.raises(FailedPrecondition, match="empty: none of the 2 files"):
        domain.create(header(), chunks(tar_gz({"a/x.png": b"", "b/y.png": b"text"})))
    one_label = {n: d for n, d in digit_files.items() if n.startswith("1/")}
    with pytest.raises(FailedPrecondition, match="at least two labels"):
        domain.create(header(), chunks(tar_gz(one_label)))
    assert not [info.key for info in store.list("datasets/") if info.key.endswith("manifest.json")]


def test_local_path_and_object_prefix_sources(store, tmp_path, digit_files):
    root = tmp_path / "photos"
    for name, data in digit_files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        store.put_bytes(f"uploads/u1/{name}", data)
    domain = IngestDomain(store, local_roots=[tmp_path])
    local = domain.create(pb.CreateDatasetHeader(source=common_pb2.DataSource(local_path=str(root))), [])
    remote = domain.create(pb.CreateDatasetHeader(source=common_pb2.DataSource(object_prefix="uploads/u1")), [])
    assert local.image_count == remote.image_count == 120
    lists = [store.get_bytes(f"datasets/{d.ref.dataset_id}/train.list") for d in (local, remote)]
    assert lists[0] == lists[1]  # same content, same seed: same lists, wherever the files came from
    again = domain.create(pb.CreateDatasetHeader(source=common_pb2.DataSource(dataset_id=local.ref.dataset_id)), [])
    assert again == local
    page, token = domain.list(page_size=1)
    assert len(page) == 1 and page[0].ref.dataset_id == remote.ref.dataset_id and token == "1"
    page, token = domain.list(page_size=1, page_token=token)
    assert page[0].ref.dataset_id == local.ref.dataset_id and token == ""
    with pytest.raises(InvalidArgument):
        domain.list(page_token="abc")


def test_a_local_path_may_be_a_list_file_or_an_archive_as_in_dataset_prepare(store, tmp_path, digit_files):
    root = tmp_path / "photos"
    for name, data in digit_files.items():
        (root / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "imgs" / name).write_bytes(data)
    rows = ["path digit parity"] + [f"imgs/{name} {name[0]} {'even' if int(name[0]) % 2 == 0 else 'odd'}"
                                    for name in sorted(digit_files)]
    (root / "list.tsv").write_text("\n".join(rows) + "\n")
    archive = tmp_path / "digits.tar.gz"
    archive.write_bytes(tar_gz({f"wrap/{name}": data for name, data in digit_files.items()}
                               | {"/etc/evil.png": b"x"}))
    domain = IngestDomain(store, local_roots=[tmp_path])
    listed = domain.create(pb.CreateDatasetHeader(source=common_pb2.DataSource(local_path=str(root / "list.tsv"))), [])
    assert list(listed.ref.tasks) == ["digit", "parity"] and listed.image_count == 120
    packed = domain.create(pb.CreateDatasetHeader(source=common_pb2.DataSource(local_path=str(archive))), [])
    assert list(packed.ref.tasks) == ["label"] and packed.image_count == 120
    assert packed.rejected_count == 1  # the unsafe entry is left out and reported; the good data is kept
    manifest = json.loads(store.get_bytes(f"datasets/{packed.ref.dataset_id}/manifest.json"))
    assert manifest["source"] == {"kind": "local_path", "path": str(archive)}
    with pytest.raises(InvalidArgument, match=r"list\.tsv is itself a list file") as caught:
        domain.create(pb.CreateDatasetHeader(source=common_pb2.DataSource(
            local_path=str(root / "list.tsv"), list_file="other.txt")), [])
    assert caught.value.field == "header.source.list_file"
    (tmp_path / "notes.bin").write_bytes(bytes(range(256)))
    with pytest.raises(InvalidArgument, match="notes.bin is neither a folder, a list file") as caught:
        domain.create(pb.CreateDatasetHeader(source=common_pb2.DataSource(local_path=str(tmp_path / "notes.bin"))), [])
    assert caught.value.field == "header.source.local_path"


def test_prepare_says_what_it_does_and_counts_the_images_it_writes(store, tmp_path, digit_files):
    from services.ingest.prepare import prepare_dataset

    root = tmp_path / "photos"
    for name, data in digit_files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    heard = []
    prepare_dataset(root, store, "datasets/p/", IngestOptions().validated("options"), dataset_id="p",
                    source={"kind": "local_path"}, progress=lambda *said: heard.append(said))
    assert heard[0][0].startswith("validating images (") and len(heard[0]) == 1
    writing = [said for said in heard if said[0] == "writing images"]
    assert len(writing) == 120 and all(total == 120 and unit == "images" for _, _, total, unit in writing)
    assert sorted(done for _, done, _, _ in writing) == list(range(1, 121))


# --------------------------------------------------------------------------- events


@pytest.fixture
def bus():
    bus = InProcessEventBus(backoff_s=0.01, outage_window_s=0.5)
    yield bus
    bus.close()


def submitted(job_id: str, source: common_pb2.DataSource, **options) -> events_pb2.Event:
    spec = common_pb2.JobSpec(source=source, dataset=common_pb2.DatasetOptions(**options))
    return new_event(job_id, "jobs", job_submitted=events_pb2.JobSubmitted(spec=spec))


def outcomes(events: list, job_id: str) -> list[tuple[str, events_pb2.Event]]:
    return [(e.WhichOneof("payload"), e) for e in events if e.job_id == job_id and e.producer == "ingest"
            and e.WhichOneof("payload") != "stage_heartbeat"]


def test_a_job_gets_one_dataset_and_one_event_even_when_redelivered(store, bus, digit_files):
    for name, data in digit_files.items():
        store.put_bytes(f"uploads/job/{name}", data)
    domain = IngestDomain(store, bus)
    seen = []
    bus.subscribe("observer", seen.append)
    bus.subscribe("ingest", domain.handle, kinds=["job_submitted"])
    source = common_pb2.DataSource(object_prefix="uploads/job/")
    bus.publish(submitted("job-1", source, seed=9))
    bus.drain(30)
    [(kind, event)] = outcomes(seen, "job-1")
    assert kind == "dataset_prepared"
    prepared = event.dataset_prepared
    assert prepared.dataset.dataset_id == "ds-job-1" and prepared.dataset.uri == store.uri("datasets/ds-job-1")
    assert prepared.train_count + prepared.val_count == 120 and prepared.val_count == 10  # 1 of 12 per class
    manifest = store.get_bytes("datasets/ds-job-1/manifest.json")

    written = len(store.writes)
    bus.publish(submitted("job-1", source, seed=9))  # the same job again, a new event id
    bus.drain(30)
    assert len(outcomes(seen, "job-1")) == 1
    assert store.writes[written:] == [] and store.get_bytes("datasets/ds-job-1/manifest.json") == manifest
    assert [d.ref.dataset_id for d in domain.list()[0]] == ["ds-job-1"]

    bus.publish(submitted("job-2", common_pb2.DataSource(dataset_id="ds-job-1")))
    bus.drain(30)
    [(kind, event)] = outcomes(seen, "job-2")
    assert kind == "dataset_prepared" and event.dataset_prepared.dataset == prepared.dataset
    assert bus.dead_letters() == []


def test_a_crash_after_the_manifest_publishes_without_rebuilding(store, bus, digit_files):
    for name, data in digit_files.items():
        store.put_bytes(f"uploads/job/{name}", data)
    domain = IngestDomain(store, bus)
    domain._from_source("ds-job-7", common_pb2.DataSource(object_prefix="uploads/job/"),
                        IngestOptions(), "spec.source", "")  # built, then "crashed" before publishing
    written = len(store.writes)
    seen = []
    bus.subscribe("observer", seen.append)
    bus.subscribe("ingest", domain.handle)
    bus.publish(submitted("job-7", common_pb2.DataSource(object_prefix="uploads/job/")))
    bus.drain(30)
    assert [kind for kind, _ in outcomes(seen, "job-7")] == ["dataset_prepared"]
    assert not [k for k in store.writes[written:] if k.startswith("datasets/")]


@pytest.mark.parametrize(("source", "options", "expected"), [
    (common_pb2.DataSource(object_prefix="uploads/job/"), {"val_fraction": 2.0}, "spec.dataset.val_fraction"),
    (common_pb2.DataSource(dataset_id="ds-missing"), {}, "dataset 'ds-missing' not found"),
    (common_pb2.DataSource(object_prefix="uploads/nothing/"), {}, "object prefix 'uploads/nothing/' not found"),
    (common_pb2.DataSource(object_prefix="uploads/bad/"), {}, "the dataset would be empty"),
    (common_pb2.DataSource(object_prefix="uploads/job/", list_file="labels.txt"), {}, "spec.source.list_file"),
])
def test_user_data_problems_fail_the_stage_once(store, bus, digit_files, source, options, expected):
    for name, data in digit_files.items():
        store.put_bytes(f"uploads/job/{name}", data)
    store.put_bytes("uploads/bad/a/1.png", b"")
    store.put_bytes("uploads/bad/b/1.png", b"not a png")
    domain = IngestDomain(store, bus)
    seen = []
    bus.subscribe("observer", seen.append)
    bus.subscribe("ingest", domain.handle, kinds=["job_submitted"])
    bus.publish(submitted("job-f", source, **options))
    bus.publish(submitted("job-f", source, **options))
    bus.drain(30)
    [(kind, event)] = outcomes(seen, "job-f")
    assert kind == "stage_failed" and event.stage_failed.stage == common_pb2.JOB_STAGE_INGEST
    assert expected in event.stage_failed.message
    assert bus.dead_letters() == []


class BrokenStore(RecordingStore):
    def _list(self, prefix):
        raise Unavailable("object store down")


def test_infrastructure_failures_are_retried_then_dead_lettered_not_reported_as_user_errors(tmp_path, bus):
    store = BrokenStore(tmp_path / "store")
    domain = IngestDomain(store, bus)
    seen = []
    bus.subscribe("observer", seen.append)
    bus.subscribe("ingest", domain.handle)
    bus.publish(submitted("job-x", common_pb2.DataSource(object_prefix="uploads/x/")))
    bus.drain(30)
    assert outcomes(seen, "job-x") == []
    [letter] = bus.dead_letters()
    assert "object store down" in letter.reason and letter.event().job_id == "job-x"


def test_job_ids_map_to_safe_dataset_ids():
    assert IngestDomain.dataset_id_for_job("0f6f-11") == "ds-0f6f-11"
    odd = IngestDomain.dataset_id_for_job("../../weird id")
    assert odd.startswith("ds-") and "/" not in odd and len(odd) == 35
    assert Path(odd).name == odd


@pytest.mark.parametrize("list_file", ["labels.txt", "wrap/labels.txt"])
def test_a_multi_task_list_file_inside_an_uploaded_archive(store, digit_files, list_file):
    files = {f"wrap/imgs/{name}": data for name, data in digit_files.items()}
    rows = ["path digit parity"] + [f"imgs/{name} {name[0]} {'even' if int(name[0]) % 2 == 0 else 'odd'}"
                                    for name in sorted(digit_files)]
    rows[5] = rows[5].rsplit(" ", 1)[0] + " -"  # one unknown parity
    files["wrap/labels.txt"] = ("\n".join(rows) + "\n").encode()
    request = pb.CreateDatasetHeader(archive_format=pb.ARCHIVE_FORMAT_TAR_GZ,
                                     source=common_pb2.DataSource(list_file=list_file))
    dataset = IngestDomain(store).create(request, chunks(tar_gz(files)))
    assert list(dataset.ref.tasks) == ["digit", "parity"] and dataset.image_count == 120
    prefix = f"datasets/{dataset.ref.dataset_id}/"
    labels = json.loads(store.get_bytes(prefix + "labels.json"))
    assert labels["tasks"][1] == {"name": "parity", "classes": ["even", "odd"]}
    lines = [row.split() for row in store.get_bytes(prefix + "train.list").decode().splitlines()]
    lines += [row.split() for row in store.get_bytes(prefix + "val.list").decode().splitlines()]
    assert len(lines) == 120 and all(len(parts) == 3 for parts in lines)
    assert sum(parts[2] == "-1" for parts in lines) == 1
    assert all(parts[2] == "-1" or int(parts[2]) == int(parts[1]) % 2 for parts in lines)


def test_a_job_cancelled_before_ingest_starts_gets_job_cancelled_and_no_dataset(store, bus, digit_files):
    for name, data in digit_files.items():
        store.put_bytes(f"uploads/c1/{name}", data)
    Cancellations(store).request("job-c1", "not needed")
    domain = IngestDomain(store, bus)
    seen = []
    bus.subscribe("observer", seen.append)
    bus.subscribe("ingest", domain.handle, kinds=["job_submitted"])
    bus.publish(submitted("job-c1", common_pb2.DataSource(object_prefix="uploads/c1/")))
    bus.drain(30)
    [(kind, event)] = outcomes(seen, "job-c1")
    assert kind == "job_cancelled" and event.job_cancelled.stage == common_pb2.JOB_STAGE_INGEST
    assert list(store.list(f"datasets/{IngestDomain.dataset_id_for_job('job-c1')}/")) == []


def test_a_cancel_during_the_image_uploads_stops_ingest_and_leaves_no_half_dataset(store, bus, digit_files):
    for name, data in digit_files.items():
        store.put_bytes(f"uploads/c2/{name}", data)
    domain = IngestDomain(store, bus)
    domain.stage.check_seconds = 0  # look at the marker at every check
    uploads = []
    original = store.put_file

    def put_file(key, *args, **kwargs):  # the cancel comes once the first images are in
        uploads.append(key)
        if len(uploads) == 3:
            Cancellations(store).request("job-c2", "stop now")
        return original(key, *args, **kwargs)

    store.put_file = put_file
    seen = []
    bus.subscribe("observer", seen.append)
    bus.subscribe("ingest", domain.handle, kinds=["job_submitted"])
    bus.publish(submitted("job-c2", common_pb2.DataSource(object_prefix="uploads/c2/")))
    bus.drain(30)
    assert [kind for kind, _ in outcomes(seen, "job-c2")] == ["job_cancelled"]
    assert 3 <= len(uploads) < len(digit_files)  # stopped part-way through
    assert list(store.list(f"datasets/{IngestDomain.dataset_id_for_job('job-c2')}/")) == []
