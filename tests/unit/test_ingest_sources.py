"""Sources: folder-per-label (nested labels), multi-task list files, object-store prefixes, and safe
archive extraction — nothing is ever written outside the destination, good entries are kept, and
each rejected entry is listed with its reason."""

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from services.common.errors import InvalidArgument, ResourceExhausted
from services.common.storage import LocalObjectStore
from services.ingest.options import SourceLimits
from services.ingest.sources import (
    collect_folders,
    collect_list_file,
    detect_archive_format,
    download_prefix,
    extract_archive,
    unwrap,
)


def png(color: int = 0, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (size, size), color).save(buffer, "PNG")
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def codes(rejects) -> dict[str, str]:
    return {r.path: r.code for r in rejects}


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}


# --------------------------------------------------------------------------- folders and list files


def test_folders_give_nested_labels_and_reject_top_level_files(tmp_path):
    root = tmp_path / "src"
    write(root / "shoes" / "boots" / "1.png", png(1))
    write(root / "shoes" / "sandals" / "2.png", png(2))
    write(root / "bags" / "3.png", png(3))
    write(root / "readme.txt", b"hello")
    write(root / ".DS_Store", b"junk")
    write(root / "bags" / ".hidden.png", png(4))
    write(root / "__MACOSX" / "bags" / "._3.png", b"junk")
    (root / "linked").symlink_to(root / "bags")

    found = collect_folders(root)
    assert [(c.name, c.labels) for c in found.candidates] == [
        ("bags/3.png", ("bags",)), ("shoes/boots/1.png", ("shoes/boots",)), ("shoes/sandals/2.png", ("shoes/sandals",))]
    assert all(Path(c.path).is_file() for c in found.candidates)
    assert codes(found.rejected) == {"readme.txt": "unlabelled", "linked": "link"}
    assert found.ignored == 3
    assert set(found.declared) == {(0, "bags"), (0, "shoes/boots"), (0, "shoes/sandals")}


def test_batches_reach_the_callback_in_candidate_order(tmp_path):
    for label in ("b", "a", "c"):
        for i in range(3):
            write(tmp_path / label / f"{i}.png", png(i))
    seen: list[str] = []
    found = collect_folders(tmp_path, on_batch=seen.extend)
    assert seen == [c.path for c in found.candidates]
    assert [c.labels[0] for c in found.candidates] == ["a"] * 3 + ["b"] * 3 + ["c"] * 3


def test_list_file_with_header_unknowns_and_bad_lines(tmp_path):
    write(tmp_path / "imgs" / "a.png", png(1))
    write(tmp_path / "imgs" / "b.png", png(2))
    write(tmp_path / "imgs" / "c.png", png(3))
    (tmp_path / "labels.txt").write_text(
        "path color shape\n"
        "imgs/a.png red round\n"
        "imgs/b.png\tblue\t-\n"
        "imgs/c.png - square\n"
        "imgs/d.png red square\n"
        "../outside.png red round\n"
        "imgs/a.png red\n"
        "imgs/c.png - -\n"
        "\n")
    found = collect_list_file(tmp_path, "labels.txt")
    assert found.tasks == ("color", "shape")
    assert [(c.name, c.labels) for c in found.candidates] == [
        ("imgs/a.png", ("red", "round")), ("imgs/b.png", ("blue", None)), ("imgs/c.png", (None, "square"))]
    assert codes(found.rejected) == {"imgs/d.png": "missing", "../outside.png": "unsafe-path",
                                     "labels.txt:7": "malformed-line", "imgs/c.png": "unlabelled"}
    assert set(found.declared) == {(0, "red"), (0, "blue"), (1, "round"), (1, "square")}


@pytest.mark.parametrize(("content", "problem"), [
    ("imgs/a.png red\n", "header"), ("path\n", "header"), ("path color color\n", "repeat"), ("", "empty")])
def test_an_unusable_list_file_names_the_field(tmp_path, content, problem):
    (tmp_path / "list.txt").write_text(content)
    with pytest.raises(InvalidArgument, match=problem) as caught:
        collect_list_file(tmp_path, "list.txt", "header.source.list_file")
    assert caught.value.field == "header.source.list_file"


def test_list_file_must_exist_and_stay_inside(tmp_path):
    with pytest.raises(InvalidArgument, match="not a file"):
        collect_list_file(tmp_path, "nope.txt")
    with pytest.raises(InvalidArgument, match=r"\.\."):
        collect_list_file(tmp_path, "../etc/passwd")


# --------------------------------------------------------------------------- archives


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", linkname: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = linkname
    info.mode = 0o644
    return info, io.BytesIO(data) if kind == tarfile.REGTYPE else None


def build_tar(path: Path, mode: str, big: bytes) -> None:
    with tarfile.open(path, mode) as tar:
        for member in [
            tar_member("dataset/", tarfile.DIRTYPE),
            tar_member("dataset/cats/1.png", data=png(10)),
            tar_member("dataset/dogs/1.png", data=png(20)),
            tar_member("../evil.png", data=png(30)),
            tar_member("/tmp/abs-evil.png", data=png(31)),
            tar_member("dataset/cats/../../../evil2.png", data=png(32)),
            tar_member("dataset/cats/link.png", tarfile.SYMTYPE, linkname="../../../../etc/passwd"),
            tar_member("dataset/dogs/hard.png", tarfile.LNKTYPE, linkname="dataset/cats/1.png"),
            tar_member("dataset/dev/null", tarfile.CHRTYPE),
            tar_member("dataset/dev/sda", tarfile.BLKTYPE),
            tar_member("dataset/cats/pipe", tarfile.FIFOTYPE),
            tar_member("dataset/cats/1.png", data=png(99)),
            tar_member("dataset/cats/big.png", data=big),
        ]:
            tar.addfile(*member)


@pytest.mark.parametrize(("mode", "fmt"), [("w", "tar"), ("w:gz", "tar.gz")])
def test_tar_extraction_keeps_good_entries_and_lists_every_unsafe_one(tmp_path, mode, fmt):
    archive = tmp_path / "upload"
    build_tar(archive, mode, big=bytes(5000))
    dest = tmp_path / "work" / "files"
    assert detect_archive_format(archive) == fmt
    rejects = extract_archive(archive, fmt, dest, SourceLimits(max_file_bytes=4096)).rejected

    assert codes(rejects) == {
        "../evil.png": "unsafe-path",
        "/tmp/abs-evil.png": "unsafe-path",
        "dataset/cats/../../../evil2.png": "unsafe-path",
        "dataset/cats/link.png": "link",
        "dataset/dogs/hard.png": "link",
        "dataset/dev/null": "special-file",
        "dataset/dev/sda": "special-file",
        "dataset/cats/pipe": "special-file",
        "dataset/cats/1.png": "duplicate-entry",
        "dataset/cats/big.png": "too-large",
    }
    reasons = {r.path: r.reason for r in rejects}
    assert "absolute" in reasons["/tmp/abs-evil.png"] and "hard link" in reasons["dataset/dogs/hard.png"]
    assert "character device" in reasons["dataset/dev/null"] and "FIFO" in reasons["dataset/cats/pipe"]
    # good entries, first copy kept; nothing anywhere else
    assert files_under(dest) == {"dataset/cats/1.png", "dataset/dogs/1.png"}
    assert (dest / "dataset/cats/1.png").read_bytes() == png(10)
    assert files_under(tmp_path) == {"upload", "work/files/dataset/cats/1.png", "work/files/dataset/dogs/1.png"}
    assert not Path("/tmp/abs-evil.png").exists()
    assert unwrap(dest) == dest / "dataset"


def zip_entry(zf: zipfile.ZipFile, name: str, data: bytes = b"", mode: int | None = None) -> None:
    info = zipfile.ZipInfo(name)
    if mode is not None:
        info.create_system = 3
        info.external_attr = mode << 16
    zf.writestr(info, data)


@pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning")
def test_zip_extraction_keeps_good_entries_and_lists_every_unsafe_one(tmp_path):
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zip_entry(zf, "cats/", mode=stat.S_IFDIR | 0o755)
        zip_entry(zf, "cats/1.png", png(10), mode=stat.S_IFREG | 0o644)
        zip_entry(zf, "dogs/1.png", png(20))
        zip_entry(zf, "../evil.png", png(30))
        zip_entry(zf, "..\\evil-windows.png", png(31))
        zip_entry(zf, "/abs-evil.png", png(32))
        zip_entry(zf, "C:/evil-drive.png", png(33))
        zip_entry(zf, "cats/link.png", b"../../../etc/passwd", mode=stat.S_IFLNK | 0o777)
        zip_entry(zf, "cats/dev", b"", mode=stat.S_IFCHR | 0o600)
        zip_entry(zf, "cats/big.png", bytes(5000))
        zip_entry(zf, "dogs/1.png", png(99))
    dest = tmp_path / "files"
    rejects = extract_archive(archive, "zip", dest, SourceLimits(max_file_bytes=4096)).rejected
    assert codes(rejects) == {"../evil.png": "unsafe-path", "..\\evil-windows.png": "unsafe-path",
                              "/abs-evil.png": "unsafe-path", "C:/evil-drive.png": "unsafe-path",
                              "cats/link.png": "link", "cats/dev": "special-file", "cats/big.png": "too-large",
                              "dogs/1.png": "duplicate-entry"}
    assert files_under(dest) == {"cats/1.png", "dogs/1.png"}
    assert (dest / "dogs/1.png").read_bytes() == png(20)
    assert files_under(tmp_path) == {"upload.zip", "files/cats/1.png", "files/dogs/1.png"}


def mark_encrypted(archive: Path, name: bytes) -> None:
    """Sets the 'encrypted' flag of entry `name` in its local header and its central directory record
    (zipfile cannot write encrypted entries, and resets flags it is given)."""
    data = bytearray(archive.read_bytes())
    for signature, flags_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            if data[start + name_at:start + name_at + len(name)] == name:
                data[start + flags_at] |= 0x1
            start += 4
    archive.write_bytes(bytes(data))


def test_zip_encrypted_entries_are_rejected(tmp_path):
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zip_entry(zf, "cats/1.png", png(10))
        zip_entry(zf, "cats/secret.png", png(11))
    mark_encrypted(archive, b"cats/secret.png")
    assert zipfile.ZipFile(archive).getinfo("cats/secret.png").flag_bits & 0x1
    rejects = extract_archive(archive, "zip", tmp_path / "files").rejected
    assert codes(rejects) == {"cats/secret.png": "encrypted"}
    assert files_under(tmp_path / "files") == {"cats/1.png"}


def test_the_digest_identifies_the_content_not_the_archive_bytes(tmp_path):
    files = {"cats/1.png": png(1), "dogs/1.png": png(2), "../bad.png": png(3)}
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as tar:
        for name, data in files.items():
            tar.addfile(*tar_member(name, data=data))
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as zf:
        for name, data in reversed(files.items()):
            zip_entry(zf, name, data)
    a = extract_archive(tmp_path / "a.tar.gz", "tar.gz", tmp_path / "a")
    b = extract_archive(tmp_path / "b.zip", "zip", tmp_path / "b")
    assert a.digest == b.digest and a.files == b.files == 2
    with zipfile.ZipFile(tmp_path / "c.zip", "w") as zf:
        zip_entry(zf, "cats/1.png", png(1))
        zip_entry(zf, "dogs/1.png", png(9))
    assert extract_archive(tmp_path / "c.zip", "zip", tmp_path / "c").digest != a.digest


def test_archive_totals_beyond_the_limits_stop_the_extraction(tmp_path):
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        for i in range(5):
            tar.addfile(*tar_member(f"x/{i}.png", data=bytes(1000)))
    with pytest.raises(ResourceExhausted, match="more than 3000 bytes"):
        extract_archive(archive, "tar", tmp_path / "f1", SourceLimits(max_total_bytes=3000))
    with pytest.raises(ResourceExhausted, match="more than 4 entries"):
        extract_archive(archive, "tar", tmp_path / "f2", SourceLimits(max_files=4))


def test_not_an_archive_or_a_damaged_one_is_an_invalid_argument(tmp_path):
    bogus = write(tmp_path / "bogus", b"definitely not an archive" * 100)
    with pytest.raises(InvalidArgument, match="not a zip archive") as caught:
        extract_archive(bogus, "zip", tmp_path / "f", field_name="header.archive_format")
    assert caught.value.field == "header.archive_format"
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for i in range(20):
            tar.addfile(*tar_member(f"x/{i}.bin", data=os.urandom(2000)))
    cut = write(tmp_path / "cut.tar.gz", archive.read_bytes()[:20000])
    with pytest.raises(InvalidArgument, match="damaged or incomplete"):
        extract_archive(cut, "tar.gz", tmp_path / "g")
    with pytest.raises(InvalidArgument, match="looks like tar.gz"):
        extract_archive(archive, "zip", tmp_path / "h")


def test_unwrap_descends_only_through_a_lone_wrapper_folder(tmp_path):
    write(tmp_path / "a" / "b" / "cats" / "1.png", png())
    write(tmp_path / "a" / "b" / "dogs" / "1.png", png())
    assert unwrap(tmp_path) == tmp_path / "a" / "b"
    single = tmp_path / "single"
    write(single / "cats" / "1.png", png())
    assert unwrap(single) == single  # 'cats' is the label, not a wrapper


# --------------------------------------------------------------------------- object store


def test_download_prefix_copies_objects_under_the_limits(tmp_path):
    store = LocalObjectStore(tmp_path / "store")
    store.put_bytes("uploads/u1/cats/1.png", png(1))
    store.put_bytes("uploads/u1/dogs/sub/2.png", png(2))
    store.put_bytes("uploads/u1/dogs/huge.png", bytes(10_000))
    store.put_bytes("uploads/u10/other.png", png(3))  # a sibling prefix, not part of u1
    rejects = download_prefix(store, "uploads/u1", tmp_path / "out", SourceLimits(max_file_bytes=5000))
    assert codes(rejects) == {"dogs/huge.png": "too-large"}
    assert files_under(tmp_path / "out") == {"cats/1.png", "dogs/sub/2.png"}
    assert (tmp_path / "out" / "dogs/sub/2.png").read_bytes() == png(2)
    with pytest.raises(ResourceExhausted):
        download_prefix(store, "uploads/u1/", tmp_path / "out2", SourceLimits(max_files=2))


def test_special_files_in_a_local_folder_are_rejected_not_read(tmp_path):
    write(tmp_path / "cats" / "1.png", png(1))
    os.mkfifo(tmp_path / "cats" / "pipe.png")
    (tmp_path / "cats" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    found = collect_folders(tmp_path)
    assert [c.name for c in found.candidates] == ["cats/1.png"]
    assert codes(found.rejected) == {"cats/pipe.png": "special-file", "cats/dangling.png": "special-file"}
