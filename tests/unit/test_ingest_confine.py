"""Ingest reads local files only under CLASSFORGE_INGEST_LOCAL_ROOTS (issue #16): none configured refuses
every local path; a path counts by its real path (links and '..' resolved); a symbolic link inside a root
that leads out is refused, not read, and reported by its own name only; link loops end; and nothing said
about a refused path depends on what lies outside (no existence oracle, no names, no counts)."""

import io
import json
import os
import tarfile

import grpc
import numpy as np
import pytest
from PIL import Image

from classforge.v1 import common_pb2, events_pb2
from classforge.v1 import ingest_service_pb2 as pb
from services.common.errors import InvalidArgument, NotFound, PermissionDenied
from services.common.events import new_event
from services.common.storage import LocalObjectStore
from services.ingest.confine import LocalRoots, parse_roots
from services.ingest.domain import IngestDomain
from services.ingest.sources import collect_folders, collect_list_file

OUTSIDE_SECRET_NAME = "outside-secret-7f3a"


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def layout(tmp_path):
    """root/: cats and dogs, 6 distinct images each; outside/: images named like a secret, in a folder
    beside the root (and a sibling folder whose name starts like the root's)."""
    root = tmp_path / "root"
    for i in range(6):
        write(root / "cats" / f"c{i}.png", png(i))
        write(root / "dogs" / f"d{i}.png", png(100 + i))
    outside = tmp_path / "outside"
    for i in range(4):
        write(outside / "stolen" / f"{OUTSIDE_SECRET_NAME}-{i}.png", png(200 + i))
    write(tmp_path / "rootish" / "cats" / "x.png", png(300))
    return root, outside


def create(domain: IngestDomain, path) -> pb.Dataset:
    return domain.create(pb.CreateDatasetHeader(source=common_pb2.DataSource(local_path=str(path))), [])


def report_text(store: LocalObjectStore, dataset: pb.Dataset) -> str:
    prefix = f"datasets/{dataset.ref.dataset_id}/"
    return store.get_bytes(prefix + "report.json").decode() + store.get_bytes(prefix + "report.md").decode()


# --------------------------------------------------------------------------- the roots themselves


def test_a_path_counts_by_its_real_path_whatever_the_spelling_of_root_or_path(tmp_path, layout):
    root, outside = layout
    (tmp_path / "via-link").symlink_to(root, target_is_directory=True)
    for spelled in (str(root), str(root) + "/", str(root) + "//", str(tmp_path / "via-link"),
                    str(root / "cats" / ".." )):
        roots = LocalRoots([spelled])
        assert roots.contains(root) and roots.contains(root / "cats" / "c0.png"), spelled
        assert roots.contains(root / "not-yet-there.png"), spelled  # inside, whether or not it exists
        assert not roots.contains(outside), spelled
        assert not roots.contains(root / ".." / "outside"), spelled
        assert not roots.contains(tmp_path / "rootish"), spelled  # a shared name prefix is not "under"
    assert LocalRoots(["/"]).contains("/etc/passwd")
    assert not LocalRoots([])
    assert parse_roots("") == [] and parse_roots(":/data::/srv/x:") == ["/data", "/srv/x"]


def test_the_setting_takes_absolute_folders_and_defaults_to_none():
    from services.common.settings import SettingsError
    from services.ingest.settings import IngestSettings

    base = {"CLASSFORGE_KAFKA_BOOTSTRAP": "k:9092", "CLASSFORGE_S3_ENDPOINT": "s:9000",
            "CLASSFORGE_S3_ACCESS_KEY": "a", "CLASSFORGE_S3_SECRET_KEY": "b"}
    assert IngestSettings.load(base).local_root_list() == []
    assert IngestSettings.load({**base, "CLASSFORGE_INGEST_LOCAL_ROOTS": "/data/:/srv/images"}
                               ).local_root_list() == ["/data/", "/srv/images"]
    with pytest.raises(SettingsError, match=r"^CLASSFORGE_INGEST_LOCAL_ROOTS: 'data' is not an absolute path"):
        IngestSettings.load({**base, "CLASSFORGE_INGEST_LOCAL_ROOTS": "/srv:data"})


def test_no_roots_refuses_every_local_path_and_says_which_variable_allows_them(tmp_path, layout):
    root, _ = layout
    domain = IngestDomain(LocalObjectStore(tmp_path / "store"))
    for path in (root, "/etc", "/proc/self", tmp_path / "missing"):
        with pytest.raises(PermissionDenied) as caught:
            create(domain, path)
        assert "local paths are disabled" in caught.value.message
        assert "CLASSFORGE_INGEST_LOCAL_ROOTS" in caught.value.message
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert list((tmp_path / "store").rglob("*.json")) == []  # nothing was built


@pytest.mark.parametrize("outside_path", ["/etc", "/etc/passwd", "/proc/self", "/proc/self/environ", "/"])
def test_system_folders_are_refused_when_roots_are_set(tmp_path, layout, outside_path):
    root, _ = layout
    domain = IngestDomain(LocalObjectStore(tmp_path / "store"), local_roots=[root])
    with pytest.raises(PermissionDenied, match="is outside the folders this service may read"):
        create(domain, outside_path)


def test_the_refusal_is_the_same_whether_the_outside_path_exists_or_not(tmp_path, layout):
    root, outside = layout
    domain = IngestDomain(LocalObjectStore(tmp_path / "store"), local_roots=[root])

    def refusal(path: str) -> str:
        with pytest.raises(PermissionDenied) as caught:
            create(domain, path)
        return caught.value.message.replace(path, "<PATH>")

    existing = [str(outside / "stolen"), "/etc/passwd", str(outside / "stolen" / f"{OUTSIDE_SECRET_NAME}-0.png")]
    missing = [str(outside / "nothing"), "/etc/no-such-file-here", str(tmp_path / "no" / "such" / "dir")]
    messages = {refusal(p) for p in existing + missing}
    assert len(messages) == 1, messages
    assert OUTSIDE_SECRET_NAME not in messages.pop()
    # inside a root, a missing path may be said to be missing
    with pytest.raises(NotFound):
        create(domain, root / "nothing")


def test_dot_dot_and_a_symlinked_parent_do_not_lead_out(tmp_path, layout):
    root, outside = layout
    (root / "door").symlink_to(outside, target_is_directory=True)
    domain = IngestDomain(LocalObjectStore(tmp_path / "store"), local_roots=[root])
    for sneaky in (f"{root}/../outside/stolen", f"{root}/cats/../../outside", str(root / "door"),
                   str(root / "door" / "stolen")):
        with pytest.raises(PermissionDenied):
            create(domain, sneaky)
    with pytest.raises(InvalidArgument, match="absolute path"):
        create(domain, "root/cats")  # relative to what? the service's working folder is nobody's business


# --------------------------------------------------------------------------- links inside a root


def test_a_file_link_out_of_the_root_is_refused_not_read_and_the_rest_is_ingested(tmp_path, layout):
    root, outside = layout
    (root / "cats" / "leak.png").symlink_to(outside / "stolen" / f"{OUTSIDE_SECRET_NAME}-0.png")
    (root / "cats" / "passwd.png").symlink_to("/etc/passwd")
    (root / "cats" / "ghost.png").symlink_to(outside / "no-such-file.png")  # leads out, to nothing
    store = LocalObjectStore(tmp_path / "store")
    dataset = create(IngestDomain(store, local_roots=[root]), root)
    assert dataset.image_count == 12  # the 12 inside; the outside image (a valid PNG) was not taken
    assert dataset.rejected_count == 3
    report = json.loads(store.get_bytes(f"datasets/{dataset.ref.dataset_id}/report.json"))
    reasons = {r["path"]: r["reason"] for r in report["rejected"]}
    assert set(reasons) == {"cats/leak.png", "cats/passwd.png", "cats/ghost.png"}
    # the existing and the missing target read the same, and no target is named
    assert len(set(reasons.values())) == 1 and reasons["cats/leak.png"].startswith("link: ")
    text = report_text(store, dataset)
    assert OUTSIDE_SECRET_NAME not in text and str(outside) not in text and "/etc/passwd" not in text


def test_a_folder_link_out_of_the_root_is_refused_and_nothing_from_it_is_counted(tmp_path, layout):
    root, outside = layout
    (root / "stolen").symlink_to(outside / "stolen", target_is_directory=True)
    (root / "etc").symlink_to("/etc", target_is_directory=True)
    store = LocalObjectStore(tmp_path / "store")
    dataset = create(IngestDomain(store, local_roots=[root]), root)
    assert dataset.image_count == 12 and dataset.rejected_count == 2  # one reject per link, not per file
    assert list(dataset.ref.tasks) == ["label"]
    labels = json.loads(store.get_bytes(f"datasets/{dataset.ref.dataset_id}/labels.json"))
    assert labels["tasks"][0]["classes"] == ["cats", "dogs"]
    text = report_text(store, dataset)
    assert OUTSIDE_SECRET_NAME not in text and "passwd" not in text


def test_links_that_stay_inside_a_root_are_followed(tmp_path, layout):
    root, _ = layout
    shared = write(tmp_path / "root-two" / "pool" / "bird.png", png(400)).parent
    data = root / "data"
    (data / "cats").mkdir(parents=True)
    for i in range(6):
        (data / "cats" / f"c{i}.png").symlink_to(root / "cats" / f"c{i}.png")
    (data / "dogs").symlink_to(root / "dogs", target_is_directory=True)
    (data / "birds").symlink_to(shared, target_is_directory=True)  # inside the second root
    collection = collect_folders(data, roots=LocalRoots([root, tmp_path / "root-two"]))
    assert sorted(c.name for c in collection.candidates) == (
        ["birds/bird.png"] + [f"cats/c{i}.png" for i in range(6)] + [f"dogs/d{i}.png" for i in range(6)])
    assert collection.rejected == []
    # read through the real paths: a link swapped afterwards is not followed to a new place
    assert all(not os.path.islink(c.path) for c in collection.candidates)


def test_a_link_loop_ends(tmp_path, layout):
    root, _ = layout
    (root / "cats" / "again").symlink_to(root, target_is_directory=True)  # an ancestor
    (root / "dogs" / "self").symlink_to(root / "dogs", target_is_directory=True)
    (root / "a").symlink_to(root / "b")  # a link cycle with no folder at the end
    (root / "b").symlink_to(root / "a")
    collection = collect_folders(root, roots=LocalRoots([root]))
    assert len(collection.candidates) == 12
    kinds = {r.path: r.reason.split(":")[0] for r in collection.rejected}
    assert kinds == {"cats/again": "link", "dogs/self": "link", "a": "special-file", "b": "special-file"}


def test_without_roots_a_walk_is_confined_to_the_folder_it_walks(tmp_path, layout):
    """`classforge dataset prepare` and anything else that walks without configured roots."""
    root, outside = layout
    (root / "cats" / "leak.png").symlink_to(outside / "stolen" / f"{OUTSIDE_SECRET_NAME}-0.png")
    collection = collect_folders(root / "cats" / "..")
    assert len(collection.candidates) == 12 and [r.path for r in collection.rejected] == ["cats/leak.png"]


def test_a_list_file_line_through_a_link_out_of_the_root_is_refused(tmp_path, layout):
    root, outside = layout
    (root / "door").symlink_to(outside / "stolen", target_is_directory=True)
    lines = ["path label", "cats/c0.png cat", "dogs/d0.png dog", f"door/{OUTSIDE_SECRET_NAME}-0.png cat",
             "door/missing.png cat"]
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    collection = collect_list_file(root, "list.txt", roots=LocalRoots([root]))
    assert [c.name for c in collection.candidates] == ["cats/c0.png", "dogs/d0.png"]
    reasons = {r.path: r.reason.replace(r.path, "") for r in collection.rejected}
    assert set(reasons) == {f"door/{OUTSIDE_SECRET_NAME}-0.png", "door/missing.png"}
    # existing or not out there: the same reason (but for the line number)
    assert {reason.split(" at ")[0] for reason in reasons.values()} == {"link: listed"}
    assert len({reason.split(" but ")[1] for reason in reasons.values()}) == 1

    (root / "sneaky.txt").symlink_to(outside / "list.txt")
    with pytest.raises(PermissionDenied, match="leads outside"):
        collect_list_file(root, "sneaky.txt", roots=LocalRoots([root]))


def test_a_job_naming_a_path_outside_the_roots_fails_its_ingest_stage(tmp_path, layout, bus):
    root, _ = layout
    domain = IngestDomain(LocalObjectStore(tmp_path / "store"), bus, local_roots=[root])
    seen = []
    bus.subscribe("observer", seen.append)
    bus.subscribe("ingest", domain.handle, kinds=["job_submitted"])
    spec = common_pb2.JobSpec(source=common_pb2.DataSource(local_path="/proc/self"))
    bus.publish(new_event("job-x", "jobs", job_submitted=events_pb2.JobSubmitted(spec=spec)))
    bus.drain(30)
    failed = [e for e in seen if e.WhichOneof("payload") == "stage_failed"]
    assert len(failed) == 1 and "outside the folders this service may read" in failed[0].stage_failed.message


# --------------------------------------------------------------------------- embedded mode


def test_embedded_mode_reads_the_users_folder_and_nothing_else(tmp_path, layout):
    from services import embedded
    from services.embedded import EmbeddedPlatform

    root, outside = layout
    source = embedded.job_source(str(root), tmp_path / "out")
    assert embedded.allowed_root(source) == root
    (root / "list.tsv").write_text("path label\ncats/c0.png cat\n")
    assert embedded.allowed_root(embedded.job_source(str(root / "list.tsv"), tmp_path / "out")) == root
    platform = EmbeddedPlatform(tmp_path / "out", [embedded.allowed_root(source)])
    try:
        from classforge.v1 import ingest_service_pb2_grpc as ingest_grpc

        stub = ingest_grpc.IngestServiceStub(platform.channel)

        def create_over_grpc(path):
            header = pb.CreateDatasetHeader(source=common_pb2.DataSource(local_path=str(path)))
            return stub.CreateDataset(iter([pb.CreateDatasetRequest(header=header)]), timeout=120).dataset

        assert create_over_grpc(root).image_count == 12
        for elsewhere in (outside, "/etc", tmp_path):
            with pytest.raises(grpc.RpcError) as caught:
                create_over_grpc(elsewhere)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        platform.stop()


# --------------------------------------------------------------------------- uploads


def test_an_uploaded_archives_links_are_left_out_each_with_its_reason_and_the_rest_kept(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for label, base in (("cats", 0), ("dogs", 100)):
            for i in range(6):
                data = png(base + i)
                info = tarfile.TarInfo(f"{label}/{i}.png")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        for name, kind, target in (("cats/passwd.png", tarfile.SYMTYPE, "/etc/passwd"),
                                   ("cats/up.png", tarfile.SYMTYPE, "../../../../outside.png"),
                                   ("dogs/hard.png", tarfile.LNKTYPE, "cats/0.png")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
    store = LocalObjectStore(tmp_path / "store")
    dataset = IngestDomain(store).create(pb.CreateDatasetHeader(archive_format=pb.ARCHIVE_FORMAT_TAR_GZ),
                                         [buffer.getvalue()])
    assert dataset.image_count == 12 and dataset.rejected_count == 3
    report = json.loads(store.get_bytes(f"datasets/{dataset.ref.dataset_id}/report.json"))
    reasons = {r["path"]: r["reason"] for r in report["rejected"]}
    assert reasons == {"cats/passwd.png": "link: symbolic link to '/etc/passwd' is not extracted",
                       "cats/up.png": "link: symbolic link to '../../../../outside.png' is not extracted",
                       "dogs/hard.png": "link: hard link to 'cats/0.png' is not extracted"}
