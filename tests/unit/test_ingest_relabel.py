"""`dataset relabel`: a reviewed mislabels.csv becomes a new dataset version (relabel.py, the ingest
domain's RelabelDataset, the CLI). Datasets are made by the real ingest pipeline and review files by the
evaluator's own writer (services/common/mislabel_review.py)."""

import io
import json
from collections import Counter
from pathlib import Path, PurePosixPath

import grpc
import pytest
from PIL import Image

from classforge.v1 import ingest_service_pb2 as pb
from classforge.v1 import ingest_service_pb2_grpc as pb_grpc
from services.common import image_hash, mislabel_review
from services.common.dataset_options import IngestOptions
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.grpc_server import GrpcServer, wait_until_serving
from services.common.storage import LocalObjectStore
from services.ingest import cli
from services.ingest.balance import ratio
from services.ingest.domain import IngestDomain
from services.ingest.main import SERVICE_NAME
from services.ingest.prepare import local_source, prepare_dataset
from services.ingest.servicer import IngestServicer

PARENT = "ds-parent"
COUNTS = {"cat": 20, "dog": 20, "owl": 8}  # owl is oversampled in training (max ratio 2)


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (10, 10), (seed % 256, (seed * 7) % 256, (seed * 13) % 256)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def source(tmp_path) -> Path:
    root = tmp_path / "source"
    seed = 0
    for label, count in COUNTS.items():
        (root / label).mkdir(parents=True)
        for i in range(count):
            seed += 1
            (root / label / f"{i}.png").write_bytes(png(seed))
    return root


@pytest.fixture
def domain(tmp_path, source) -> IngestDomain:
    store = LocalObjectStore(tmp_path / "store")
    options = IngestOptions(val_fraction=0.2, test_fraction=0.25, max_class_ratio=2, seed=3)
    prepare_dataset(source, store, f"datasets/{PARENT}/", options, dataset_id=PARENT, source=local_source(source),
                    workers=1)
    return IngestDomain(store, workers=1)


def lists(store, dataset_id: str) -> dict[str, list[tuple[str, int]]]:
    """split -> [(image id, class id)] as the list files hold them (train.list with its repeats)."""
    out = {}
    for split in ("train", "val", "test"):
        text = store.get_bytes(f"datasets/{dataset_id}/{split}.list").decode()
        out[split] = [(PurePosixPath(line.split()[0]).stem, int(line.split()[1])) for line in text.splitlines()]
    return out


def images_by_split(store, dataset_id: str) -> dict[str, tuple[str, int]]:
    """image id -> (split, class id)."""
    return {image: (split, label) for split, rows in lists(store, dataset_id).items() for image, label in rows}


def review(rows: list[dict], tmp_path: Path) -> bytes:
    """A review file as the evaluator writes it, decisions filled in."""
    path = tmp_path / "mislabels.csv"
    mislabel_review.write(path, ({**{c: "" for c in mislabel_review.COLUMNS}, **row} for row in rows))
    return path.read_bytes()


def pick(store, split: str, label: int, n: int = 1, dataset_id: str = PARENT) -> list[str]:
    return sorted({image for image, cls in lists(store, dataset_id)[split] if cls == label})[:n]


def test_relabel_drop_and_keep_make_a_new_version_with_parent_corrections_and_diff(domain, tmp_path):
    store = domain.store
    classes = list(COUNTS)
    [relabeled] = pick(store, "test", classes.index("cat"))
    [dropped] = pick(store, "train", classes.index("dog"))
    kept_empty, kept_word = pick(store, "val", classes.index("owl"), 2)
    text = review([{"image_id": relabeled, "task": "label", "given_label": "cat", "decision": "relabel:owl"},
                   {"image_id": dropped, "decision": "drop"},
                   {"image_id": kept_empty, "decision": ""},
                   {"image_id": kept_word, "decision": "keep"}], tmp_path)

    dataset, manifest = domain.relabel(PARENT, text)

    new_id = dataset.ref.dataset_id
    assert new_id.startswith(f"{PARENT}-v2-") and manifest["dataset_id"] == new_id
    assert manifest["parent"]["dataset_id"] == PARENT and len(manifest["parent"]["manifest_sha256"]) == 64
    assert manifest["lineage"] == {"root_dataset_id": PARENT, "version": 2}
    assert manifest["source"]["kind"] == "relabel"
    corrections = manifest["corrections"]
    assert (corrections["relabeled"], corrections["dropped"], corrections["kept"]) == (1, 1, 2)
    assert [(c["line"], c["image_id"], c["decision"], c["from"], c["to"]) for c in corrections["applied"]] == [
        (2, relabeled, "relabel", "cat", "owl"), (3, dropped, "drop", "dog", None)]
    assert manifest["label_counts_diff"]["label"] == {
        "cat": {"before": 20, "after": 19, "change": -1}, "dog": {"before": 20, "after": 19, "change": -1},
        "owl": {"before": 8, "after": 9, "change": 1}}

    before, after = images_by_split(store, PARENT), images_by_split(store, new_id)
    assert after[relabeled] == ("test", classes.index("owl"))
    assert dropped not in after and after[kept_empty] == before[kept_empty] and after[kept_word] == before[kept_word]
    assert manifest["counts"]["images"] == sum(COUNTS.values()) - 1
    # the images went with the version, the parent is untouched
    for image in after:
        assert store.exists(f"datasets/{new_id}/images/{image[:2]}/{image}.png")
    assert not store.exists(f"datasets/{new_id}/images/{dropped[:2]}/{dropped}.png")
    # so did their difference hashes (hashes.tsv), the dropped image's left out
    parent_hashes, hashes = (image_hash.parse_hashes(store.get_bytes(f"datasets/{d}/{image_hash.HASHES_FILE}"))
                             for d in (PARENT, new_id))
    assert hashes == {image: parent_hashes[image] for image in after} and dropped in parent_hashes
    assert images_by_split(store, PARENT) == before
    # the report says what happened; GetDataset/GetDatasetReport serve the new version
    report, markdown = domain.report(new_id)
    assert any(r.path.endswith(dropped) and "dropped-in-review: line 3" in r.reason for r in report.rejected)
    assert "## Corrections from review" in markdown and "| label | owl | 8 | 9 | +1 |" in markdown
    assert domain.get(new_id).image_count == sum(COUNTS.values()) - 1
    assert new_id in [d.ref.dataset_id for d in domain.list()[0]]

    # the same review again returns the same version; the version can itself be relabeled (v3)
    again, _ = domain.relabel(PARENT, text)
    assert again.ref.dataset_id == new_id
    [other] = pick(store, "train", classes.index("cat"), dataset_id=new_id)
    child, child_manifest = domain.relabel(new_id, review([{"image_id": other, "decision": "drop"}], tmp_path))
    assert child_manifest["lineage"] == {"root_dataset_id": PARENT, "version": 3}
    assert child_manifest["parent"]["dataset_id"] == new_id and child.ref.dataset_id.startswith(f"{PARENT}-v3-")


def test_every_image_keeps_its_split_and_training_is_rebalanced(domain, tmp_path):
    store = domain.store
    classes = list(COUNTS)
    owl = classes.index("owl")
    # move training images of cat to owl: the counts change, so the oversampling target changes
    moved = pick(store, "train", classes.index("cat"), 4)
    dropped = pick(store, "val", classes.index("dog"), 1) + pick(store, "test", owl, 1)
    rows = [{"image_id": i, "decision": "relabel:owl"} for i in moved] + [{"image_id": i, "decision": "drop"}
                                                                          for i in dropped]
    dataset, manifest = domain.relabel(PARENT, review(rows, tmp_path))

    before, after = images_by_split(store, PARENT), images_by_split(store, dataset.ref.dataset_id)
    assert set(after) == set(before) - set(dropped)
    assert all(after[image][0] == before[image][0] for image in after)  # the split of every image is kept
    assert all(after[image][1] == owl for image in moved)
    # re-balanced: the parent repeated its few owl training images; with four more owls none need repeating
    parent_train = lists(store, PARENT)["train"]
    assert Counter(c for _, c in parent_train)[owl] > Counter(c for _, c in set(parent_train))[owl]
    train = lists(store, dataset.ref.dataset_id)["train"]
    per_class = Counter(label for _, label in train)
    assert per_class == Counter(label for _, label in set(train)) and ratio(per_class.values()) <= 2
    assert manifest["counts"]["train"] == len(train)
    assert manifest["counts"]["train_unique"] == len(set(train)) and manifest["counts"]["train"] == len(train)
    assert sorted(lists(store, dataset.ref.dataset_id)["test"]) == sorted(
        (i, c) for i, c in lists(store, PARENT)["test"] if i not in dropped)


def test_bad_rows_are_all_listed_with_line_numbers_and_nothing_is_written(domain, tmp_path):
    store = domain.store
    [good] = pick(store, "train", 0)
    [other] = pick(store, "test", 1)
    text = review([{"image_id": good, "decision": "relabel:owl"},            # line 2: fine
                   {"image_id": "f" * 64, "decision": "drop"},               # 3: unknown image id
                   {"image_id": other, "decision": "relabel:horse"},         # 4: unknown class
                   {"image_id": other, "decision": "rename:owl"},            # 5: malformed decision
                   {"image_id": other, "decision": "relabel:"},              # 6: no class
                   {"image_id": good, "task": "colour", "decision": "drop"},  # 7: unknown task
                   {"image_id": good, "decision": "drop"}],                  # 8: disagrees with line 2
                  tmp_path)
    text += f"{other},x,label,cat,dog,0.9,0.5,keep,surplus\n".encode()        # 9: too many values
    keys_before = sorted(info.key for info in store.list())
    with pytest.raises(InvalidArgument) as caught:
        domain.relabel(PARENT, text)
    message = caught.value.message
    assert message.startswith("corrections: 7 bad row(s), nothing was applied")
    expected = {3: "unknown image id 'fff", 4: "unknown class 'horse' for task 'label' (classes: cat, dog, owl)",
                5: "malformed decision 'rename:owl'", 6: "relabel: names no class", 7: "unknown task 'colour'",
                8: f"image {good[:12]}… task 'label' was already given 'relabel:owl' on line 2",
                9: "9 values for 8 columns"}
    for line, words in expected.items():
        assert f"line {line}: {words}" in message, (line, message)
    assert "line 2:" not in message  # the good row is not listed
    assert sorted(info.key for info in store.list()) == keys_before  # nothing half-applied

    with pytest.raises(InvalidArgument, match=r"line 1: the header 'id,verdict' lacks the column\(s\) image_id, "
                                              r"decision"):
        domain.relabel(PARENT, b"id,verdict\nabc,drop\n")
    with pytest.raises(InvalidArgument, match="corrections: is not UTF-8 text"):
        domain.relabel(PARENT, b"image_id,decision\n\xff\xfe,drop\n")
    with pytest.raises(FailedPrecondition, match="no row changes anything \\(2 kept as they are\\)"):
        domain.relabel(PARENT, review([{"image_id": good, "decision": "keep"},
                                       {"image_id": other, "decision": "relabel:dog"}], tmp_path))  # already dog
    owls = pick(store, "train", 2, 100) + pick(store, "val", 2, 100) + pick(store, "test", 2, 100)
    with pytest.raises(FailedPrecondition, match="would leave no image of 'owl'"):
        domain.relabel(PARENT, review([{"image_id": i, "decision": "drop"} for i in owls], tmp_path))
    with pytest.raises(InvalidArgument, match="new_dataset_id: dataset 'ds-parent' already exists"):
        domain.relabel(PARENT, review([{"image_id": good, "decision": "drop"}], tmp_path), new_dataset_id=PARENT)
    assert sorted(info.key for info in store.list()) == keys_before


def test_relabel_over_grpc_and_the_local_cli(domain, tmp_path, source, capsys):
    server = GrpcServer("ingest-test", port=0, host="127.0.0.1", grace_seconds=1, plaintext=True)
    server.add_service(pb_grpc.add_IngestServiceServicer_to_server, IngestServicer(domain), SERVICE_NAME)
    server.start()
    address = f"127.0.0.1:{server.port}"
    try:
        channel = grpc.insecure_channel(address)
        wait_until_serving(channel, timeout=10)
        stub = pb_grpc.IngestServiceStub(channel)
        [image] = pick(domain.store, "test", 0)
        text = review([{"image_id": image, "decision": "relabel:dog"}], tmp_path)
        reply = stub.RelabelDataset(pb.RelabelDatasetRequest(dataset_id=PARENT, corrections=text), timeout=30)
        assert reply.parent_dataset_id == PARENT and reply.relabeled_count == 1 and reply.dropped_count == 0
        with pytest.raises(grpc.RpcError) as caught:
            stub.RelabelDataset(pb.RelabelDatasetRequest(dataset_id=PARENT, corrections=b"image_id,decision\nx,y\n"))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "line 2: unknown image id 'x'" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            stub.RelabelDataset(pb.RelabelDatasetRequest(dataset_id="ds-nope", corrections=text))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        # the CLI against the service
        (tmp_path / "c.csv").write_bytes(text)
        assert cli.main(["dataset", "relabel", PARENT, str(tmp_path / "c.csv"), "--ingest", address,
                         "--plaintext"]) == 0
        assert f"dataset {reply.dataset.ref.dataset_id} (from {PARENT}): relabeled 1" in capsys.readouterr().out
        channel.close()
    finally:
        server.stop()

    # the CLI on a local dataset folder (classforge dataset prepare's output): the version goes beside it
    local = tmp_path / "datasets" / "mine"
    assert cli.main(["dataset", "prepare", str(source), "--out", str(local), "--test-fraction", "0.25",
                     "--workers", "1"]) == 0
    capsys.readouterr()
    first = sorted(lists(LocalObjectStore(tmp_path), "mine")["test"])[0][0]
    (tmp_path / "local.csv").write_bytes(review([{"image_id": first, "decision": "drop"}], tmp_path))
    assert cli.main(["dataset", "relabel", str(local), str(tmp_path / "local.csv")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dataset mine-v2-") and "dropped 1" in out
    [version] = [p for p in local.parent.iterdir() if p.name.startswith("mine-v2-")]
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["parent"]["dataset_id"] == "mine" and manifest["counts"]["images"] == sum(COUNTS.values()) - 1
    (tmp_path / "bad.csv").write_text("image_id,decision\nnope,drop\n")
    assert cli.main(["dataset", "relabel", str(local), str(tmp_path / "bad.csv")]) == 1
    assert f"{tmp_path / 'bad.csv'}: 1 bad row(s), nothing was applied: line 2: unknown image id 'nope'" in \
        capsys.readouterr().err


def test_a_multi_task_review_changes_only_the_task_its_row_names(tmp_path, source):
    """A list file with two tasks; the row's `task` column picks which label a relabel changes."""
    rows = ["path animal size"]
    for label in COUNTS:
        for path in sorted((source / label).iterdir()):
            rows.append(f"{label}/{path.name} {label} {'big' if int(path.stem) % 2 else 'small'}")
    (source / "labels.txt").write_text("\n".join(rows) + "\n")
    store = LocalObjectStore(tmp_path / "multi")
    prepare_dataset(source, store, "datasets/ds-m/", IngestOptions(test_fraction=0.25, max_class_ratio=2, seed=1),
                    dataset_id="ds-m", source=local_source(source, "labels.txt"), list_file="labels.txt", workers=1)
    domain = IngestDomain(store, workers=1)
    text = store.get_bytes("datasets/ds-m/test.list").decode()
    path, animal, size = text.splitlines()[0].split()
    image = PurePosixPath(path).stem
    other_size = "small" if size == "0" else "big"  # classes are sorted: big 0, small 1
    _, manifest = domain.relabel("ds-m", review([{"image_id": image, "task": "size",
                                                  "decision": f"relabel:{other_size}"}], tmp_path))
    new = store.get_bytes(f"datasets/{manifest['dataset_id']}/test.list").decode().splitlines()
    [line] = [line for line in new if image in line]
    assert line.split() == [path, animal, str(1 - int(size))]  # animal unchanged, size flipped
    assert manifest["corrections"]["applied"][0]["task"] == "size"
    assert sum(d["change"] for d in manifest["label_counts_diff"]["animal"].values()) == 0
    with pytest.raises(InvalidArgument, match="line 2: unknown class 'cat' for task 'size' \\(classes: big, small\\)"):
        domain.relabel("ds-m", review([{"image_id": image, "task": "size", "decision": "relabel:cat"}], tmp_path))
