"""Issue #13: file and folder names that are not valid UTF-8 (b"caf\\xe9.png", a label folder b"cat\\xff").

Every source kind, on real files with such names: nothing raises, the good images are in the dataset,
each file with a bad name is a listed reject with its reason under a printable name, and everything
written (report.md, report.json, labels.json, the lists, the manifest) and returned over gRPC is text."""

import gzip
import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from classforge.v1 import common_pb2
from classforge.v1 import ingest_service_pb2 as pb
from services.common.dataset_options import IngestOptions
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.storage import LocalObjectStore
from services.ingest import cli
from services.ingest.domain import IngestDomain
from services.ingest.names import is_text, printable
from services.ingest.prepare import local_source, prepare_dataset
from services.ingest.report import render_markdown, to_proto
from services.ingest.sources import archive_root, download_prefix, extract_archive
from services.ingest.validation import Reject
from tests.archives import tar_gz

BAD_FILE = "file name is not valid UTF-8"
BAD_LABEL = "label folder name is not valid UTF-8"
OPTIONS = IngestOptions(val_fraction=0)
TEXT_FILES = ("labels.json", "train.list", "val.list", "test.list", "report.json", "report.md", "manifest.json")


def png(shade: int) -> bytes:
    """A small valid PNG; each shade gives different content (images are kept by content)."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8), shade).save(buffer, "PNG")
    return buffer.getvalue()


def put(root: bytes, relative: bytes, data: bytes) -> None:
    """Writes a file under a name given as bytes, the way a tester's folder holds it."""
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "wb") as out:
        out.write(data)


@pytest.fixture(autouse=True)
def _names_are_bytes(tmp_path):
    try:
        put(os.fsencode(tmp_path), b"probe/caf\xe9", b"")
    except OSError:  # pragma: no cover - a file system that only takes UTF-8 names (macOS, ZFS utf8only)
        pytest.skip("this file system refuses names that are not UTF-8")


def rejects_of(report: dict) -> dict[str, str]:
    return {r["path"]: r["reason"] for r in report["rejected"]}


def assert_all_text(value) -> None:
    """Every string in a JSON document is text (json.dumps writes a lone surrogate as an escape)."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert_all_text(key)
            assert_all_text(item)
    elif isinstance(value, list):
        for item in value:
            assert_all_text(item)
    elif isinstance(value, str):
        assert is_text(value), repr(value)


def assert_dataset_is_text(out: Path) -> dict:
    """The dataset's text files decode as UTF-8 and hold no escaped surrogates; returns report.json."""
    for name in TEXT_FILES:
        text = (out / name).read_bytes().decode("utf-8")  # strict
        if name.endswith(".json"):
            assert_all_text(json.loads(text))
    report = json.loads((out / "report.json").read_bytes())
    to_proto(report).SerializeToString()  # protobuf refuses strings that are not UTF-8
    return report


def stored_images(out: Path) -> int:
    return sum(1 for p in (out / "images").rglob("*") if p.is_file())


# --------------------------------------------------------------------------- the rendering


def test_printable_shows_undecodable_bytes_and_leaves_text_alone():
    assert printable("caf\udce9.png") == "caf\\xe9.png"
    assert printable(os.fsdecode(b"cat\xff/\xe9t\xe9.png")) == "cat\\xff/\\xe9t\\xe9.png"
    assert printable("café/ÿ.png") == "café/ÿ.png" and printable("") == ""
    assert printable("lone \ud800 surrogate") == "lone \\ud800 surrogate"  # no file name decodes to this
    assert not is_text("caf\udce9") and is_text("café")


# --------------------------------------------------------------------------- folder per label


def test_a_folder_with_names_that_are_not_utf8_is_ingested_without_them(tmp_path):
    root = os.path.join(os.fsencode(tmp_path), b"donn\xe9es")  # the data folder's own name does not matter
    for i, name in enumerate((b"cats/1.png", b"cats/2.png", b"cats/3.png", b"dogs/1.png", b"dogs/2.png",
                              b"dogs/sub/3.png")):
        put(root, name, png(10 + i))
    put(root, b"cats/caf\xe9.png", png(100))  # a valid image: only its name is wrong
    put(root, b"cat\xff/1.png", png(101))
    put(root, b"cat\xff/2.png", png(102))
    put(root, b"dogs/b\xe9b\xe9/1.png", png(103))  # a nested label folder
    put(root, b"\xe9t\xe9.png", png(104))  # at the top level: no label anyway
    out = tmp_path / "out"

    prepared = prepare_dataset(Path(os.fsdecode(root)), LocalObjectStore(out), "", OPTIONS, dataset_id="names",
                               source=local_source(Path(os.fsdecode(root))))

    assert prepared.counts["images"] == stored_images(out) == 6
    assert json.loads((out / "labels.json").read_text())["tasks"][0]["classes"] == ["cats", "dogs", "dogs/sub"]
    report = assert_dataset_is_text(out)
    rejects = rejects_of(report)
    assert set(rejects) == {"cats/caf\\xe9.png", "cat\\xff/1.png", "cat\\xff/2.png", "dogs/b\\xe9b\\xe9/1.png",
                            "\\xe9t\\xe9.png"}
    assert rejects["cats/caf\\xe9.png"].startswith("invalid-name: ") and BAD_FILE in rejects["cats/caf\\xe9.png"]
    for path in ("cat\\xff/1.png", "cat\\xff/2.png", "dogs/b\\xe9b\\xe9/1.png"):
        assert rejects[path].startswith("invalid-label: ") and BAD_LABEL in rejects[path]
    assert rejects["\\xe9t\\xe9.png"].startswith("unlabelled: ")
    assert report["rejected_by_reason"] == {"invalid-label": 3, "invalid-name": 1, "unlabelled": 1}
    assert report["source"]["path"].endswith("donn\\xe9es")
    assert {row["label"]: row["rejected"] for row in report["labels"]} == {"cats": 1, "dogs": 0, "dogs/sub": 0}
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "| cats/caf\\xe9.png | invalid-name: " in markdown and "| cat\\xff/1.png | invalid-label: " in markdown


def test_a_label_whose_every_file_has_a_bad_name_does_not_vanish_silently(tmp_path):
    root = os.fsencode(tmp_path / "src")
    for i, name in enumerate((b"cats/1.png", b"dogs/1.png", b"birds/\xe9.png")):
        put(root, name, png(110 + i))
    with pytest.raises(FailedPrecondition, match=r"'birds' \(1 files rejected: invalid-name 1\)"):
        prepare_dataset(tmp_path / "src", LocalObjectStore(tmp_path / "out"), "", OPTIONS, dataset_id="lost",
                        source={})


def test_the_cli_prepares_such_a_folder(tmp_path, capsys):
    root = os.path.join(os.fsencode(tmp_path), b"photos")
    for i, name in enumerate((b"cats/1.png", b"cats/2.png", b"dogs/1.png", b"dogs/2.png")):
        put(root, name, png(20 + i))
    put(root, b"cats/caf\xe9.png", png(120))
    out = tmp_path / "out"
    assert cli.main(["dataset", "prepare", os.fsdecode(root), "--out", str(out), "--val-fraction", "0"]) == 0
    assert "rejected 1 files: invalid-name 1" in capsys.readouterr().out
    assert list(rejects_of(assert_dataset_is_text(out))) == ["cats/caf\\xe9.png"]


# --------------------------------------------------------------------------- list files


def test_a_list_file_line_that_is_not_utf8_is_rejected_and_the_others_are_used(tmp_path):
    root = os.fsencode(tmp_path / "src")
    for i, name in enumerate((b"imgs/a.png", b"imgs/b.png", b"imgs/c.png", b"imgs/d.png")):
        put(root, name, png(30 + i))
    put(root, b"imgs/caf\xe9.png", png(130))
    put(root, b"labels.txt", b"path label\nimgs/a.png cats\nimgs/b.png cats\nimgs/caf\xe9.png cats\n"
                             b"imgs/c.png dogs\nimgs/d.png dogs\n")
    out = tmp_path / "out"
    prepared = prepare_dataset(tmp_path / "src", LocalObjectStore(out), "", OPTIONS, dataset_id="list",
                               source=local_source(tmp_path / "src", "labels.txt"), list_file="labels.txt")
    assert prepared.counts["images"] == stored_images(out) == 4
    rejects = rejects_of(assert_dataset_is_text(out))
    assert list(rejects) == ["labels.txt:4"]
    assert rejects["labels.txt:4"].startswith("malformed-line: ") and "not valid UTF-8" in rejects["labels.txt:4"]


def test_a_list_file_whose_header_is_not_utf8_names_the_field(tmp_path):
    put(os.fsencode(tmp_path), b"labels.txt", b"p\xe4th label\nimgs/a.png cats\n")
    with pytest.raises(InvalidArgument, match="cannot be read as UTF-8 text") as caught:
        prepare_dataset(tmp_path, LocalObjectStore(tmp_path / "out"), "", OPTIONS, dataset_id="list", source={},
                        list_file="labels.txt", list_file_field="header.source.list_file")
    assert caught.value.field == "header.source.list_file"


# --------------------------------------------------------------------------- archives


def tar_archive(entries: list[tuple[str, bytes | None]], mode: str, fmt: int) -> bytes:
    """Entries as (name, content), None for a symbolic link; a name holding surrogate escapes is written
    as its bytes (tarfile encodes names with surrogateescape), i.e. not as UTF-8."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode, format=fmt) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, "1.png"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(("fmt", "mode", "tar_format"), [("tar", "w", tarfile.USTAR_FORMAT),
                                                          ("tar.gz", "w:gz", tarfile.PAX_FORMAT),
                                                          ("tar", "w", tarfile.GNU_FORMAT)])
def test_a_tar_archive_with_entry_names_that_are_not_utf8(tmp_path, fmt, mode, tar_format):
    wrapper = "donn\udce9es"  # b"donn\xe9es": a wrapper folder, seen through like any other
    entries = [(f"{wrapper}/{name}", png(40 + i))
               for i, name in enumerate(("cats/1.png", "cats/2.png", "dogs/1.png", "dogs/2.png"))]
    entries += [(f"{wrapper}/cats/caf\udce9.png", png(140)), (f"{wrapper}/cat\udcff/1.png", png(141)),
                (f"{wrapper}/dogs/l\udce9.png", None)]
    archive = tmp_path / "upload"
    archive.write_bytes(tar_archive(entries, mode, tar_format))
    raw = archive.read_bytes()
    assert b"/caf\xe9.png" in (gzip.decompress(raw) if fmt == "tar.gz" else raw)  # really not UTF-8

    extracted = extract_archive(archive, fmt, tmp_path / "files")
    assert [(r.path, r.code) for r in extracted.rejected] == [("donn\\xe9es/dogs/l\\xe9.png", "link")]
    root = archive_root(tmp_path / "files")
    assert root.name == wrapper
    out = tmp_path / "out"
    prepared = prepare_dataset(root, LocalObjectStore(out), "", OPTIONS, dataset_id="tar", source={"kind": "upload"},
                               extra_rejects=extracted.rejected)

    assert prepared.counts["images"] == stored_images(out) == 4
    assert json.loads((out / "labels.json").read_text())["tasks"][0]["classes"] == ["cats", "dogs"]
    rejects = rejects_of(assert_dataset_is_text(out))
    assert set(rejects) == {"cats/caf\\xe9.png", "cat\\xff/1.png", "donn\\xe9es/dogs/l\\xe9.png"}
    assert BAD_FILE in rejects["cats/caf\\xe9.png"] and BAD_LABEL in rejects["cat\\xff/1.png"]


def zip_with_raw_names(path: Path, files: dict[str, bytes], raw: dict[bytes, bytes]) -> None:
    """A zip whose names are then patched byte for byte (same length, in the local headers and the
    central directory): zipfile itself only writes ASCII names, or UTF-8 ones with the UTF-8 flag."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    data = path.read_bytes()
    for old, new in raw.items():
        assert len(old) == len(new) and data.count(old) == 2
        data = data.replace(old, new)
    path.write_bytes(data)


def test_a_zip_archive_with_names_flagged_utf8_that_are_not(tmp_path):
    archive = tmp_path / "upload.zip"
    files = {name: png(50 + i) for i, name in enumerate(("cats/1.png", "cats/2.png", "dogs/1.png", "dogs/2.png"))}
    files |= {"cats/café.png": png(150), "catÿ/1.png": png(151), "dogs/caf#.png": png(152)}
    zip_with_raw_names(archive, files, {
        b"caf\xc3\xa9.png": b"caf\xe9_.png",  # flagged as UTF-8 (zipfile set it for 'é'), but not UTF-8
        b"cat\xc3\xbf/": b"cat\xff_/",
        b"caf#.png": b"caf\x82.png",  # no flag: cp437 by the zip format, 0x82 is 'é'
    })
    with pytest.raises(UnicodeDecodeError):  # what zipfile does with the whole archive
        zipfile.ZipFile(archive)

    extracted = extract_archive(archive, "zip", tmp_path / "files")
    assert extracted.rejected == [] and extracted.files == 7
    out = tmp_path / "out"
    prepared = prepare_dataset(tmp_path / "files", LocalObjectStore(out), "", OPTIONS, dataset_id="zip",
                               source={"kind": "upload"}, extra_rejects=extracted.rejected)

    assert prepared.counts["images"] == stored_images(out) == 5  # with dogs/café.png, a cp437 name
    assert json.loads((out / "labels.json").read_text())["tasks"][0]["classes"] == ["cats", "dogs"]
    rejects = rejects_of(assert_dataset_is_text(out))
    assert set(rejects) == {"cats/caf\\xe9_.png", "cat\\xff_/1.png"}
    assert BAD_FILE in rejects["cats/caf\\xe9_.png"] and BAD_LABEL in rejects["cat\\xff_/1.png"]


# --------------------------------------------------------------------------- object store, and the service


def store_with_raw_keys(tmp_path: Path) -> LocalObjectStore:
    store = LocalObjectStore(tmp_path / "store")
    for i, name in enumerate(("cats/1.png", "cats/2.png", "dogs/1.png", "dogs/2.png")):
        store.put_bytes(f"uploads/u1/{name}", png(60 + i))
    # put there by another tool: a local store lists these keys but refuses to read them
    put(os.fsencode(tmp_path / "store"), b"uploads/u1/cats/caf\xe9.png", png(160))
    put(os.fsencode(tmp_path / "store"), b"uploads/u1/cat\xff/1.png", png(161))
    return store


def test_an_object_prefix_with_keys_that_are_not_utf8(tmp_path):
    store = store_with_raw_keys(tmp_path)
    rejects = download_prefix(store, "uploads/u1", tmp_path / "files")
    assert {r.path: r.code for r in rejects} == {"cats/caf\\xe9.png": "invalid-name", "cat\\xff/1.png": "invalid-label"}
    out = tmp_path / "out"
    prepared = prepare_dataset(tmp_path / "files", LocalObjectStore(out), "", OPTIONS, dataset_id="prefix",
                               source={"kind": "object_prefix"}, extra_rejects=rejects)
    assert prepared.counts["images"] == stored_images(out) == 4
    assert set(rejects_of(assert_dataset_is_text(out))) == {"cats/caf\\xe9.png", "cat\\xff/1.png"}


def test_the_service_prepares_and_reports_such_datasets(tmp_path):
    store = store_with_raw_keys(tmp_path)
    domain = IngestDomain(store)
    options = common_pb2.DatasetOptions(val_fraction=0.01)
    from_prefix = domain.create(pb.CreateDatasetHeader(
        options=options, source=common_pb2.DataSource(object_prefix="uploads/u1")), [])
    upload = tar_gz({"cats/1.png": png(70), "cats/2.png": png(71), "dogs/1.png": png(72), "dogs/2.png": png(73),
                     "cats/caf\udce9.png": png(170), "cat\udcff/1.png": png(171)})
    from_upload = domain.create(pb.CreateDatasetHeader(options=options, archive_format=pb.ARCHIVE_FORMAT_TAR_GZ),
                                [upload])
    for dataset in (from_prefix, from_upload):
        assert dataset.image_count == 4 and dataset.rejected_count == 2
        report, markdown = domain.report(dataset.ref.dataset_id)
        response = pb.GetDatasetReportResponse(report=report, markdown=markdown)
        assert pb.GetDatasetReportResponse.FromString(response.SerializeToString()) == response
        assert {r.path: r.reason.split(":")[0] for r in report.rejected} == {"cats/caf\\xe9.png": "invalid-name",
                                                                            "cat\\xff/1.png": "invalid-label"}
        assert "cats/caf\\xe9.png" in markdown


# --------------------------------------------------------------------------- last-resort guards


def test_names_from_outside_the_walk_are_made_printable_before_anything_is_written(tmp_path):
    for i, name in enumerate(("cats/1.png", "cats/2.png", "dogs/1.png", "dogs/2.png")):
        put(os.fsencode(tmp_path / "src"), name.encode(), png(80 + i))
    out = tmp_path / "out"
    prepared = prepare_dataset(tmp_path / "src", LocalObjectStore(out), "", OPTIONS, dataset_id="guard",
                               source={"kind": "local_path", "path": "/data/donn\udce9es"},
                               extra_rejects=[Reject("x/caf\udce9.png", "corrupt-entry: caf\udce9.png is damaged")])
    assert prepared.counts["images"] == 4
    report = assert_dataset_is_text(out)
    assert rejects_of(report) == {"x/caf\\xe9.png": "corrupt-entry: caf\\xe9.png is damaged"}
    assert report["source"]["path"] == "/data/donn\\xe9es"
    assert "x/caf\\xe9.png" in (out / "report.md").read_text(encoding="utf-8")
    bad = dict(report, rejected=[{"path": "caf\udce9.png", "reason": "r\udce9"}])
    assert to_proto(bad).rejected[0].path == "caf\\xe9.png"  # a report.json written before the fix


def test_text_that_still_is_not_utf8_is_written_escaped_rather_than_failing(tmp_path, monkeypatch):
    from services.ingest import prepare

    for i, name in enumerate(("cats/1.png", "cats/2.png", "dogs/1.png", "dogs/2.png")):
        put(os.fsencode(tmp_path / "src"), name.encode(), png(90 + i))
    monkeypatch.setattr(prepare, "render_markdown", lambda report: render_markdown(report) + "caf\udce9\n")
    prepare_dataset(tmp_path / "src", LocalObjectStore(tmp_path / "out"), "", OPTIONS, dataset_id="g", source={})
    assert (tmp_path / "out" / "report.md").read_text(encoding="utf-8").endswith("caf\\udce9\n")
