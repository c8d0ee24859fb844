"""`classforge run`: every service in one process, a real (tiny) job from a source to a served model, and
every form of SOURCE that `classforge dataset prepare` takes."""

import json
import tarfile
import zipfile

import pytest

from classforge.v1 import common_pb2
from services import embedded
from services.common.errors import InvalidArgument
from services.common.storage import LocalObjectStore
from services.demo_data import load_digits, write_image_folders


@pytest.fixture(scope="module")
def digit_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits") / "images"
    images, labels, names = load_digits()
    write_image_folders(images, labels, names, root, per_class=60)
    return root


def write_list(root, name="list.tsv") -> str:
    """A two-task list file beside the label folders: digit and parity."""
    rows = ["path\tdigit\tparity"]
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix == ".png"):
        digit = path.parent.name
        rows.append(f"{path.relative_to(root).as_posix()}\t{digit}\t{'even' if int(digit) % 2 == 0 else 'odd'}")
    (root / name).write_text("\n".join(rows) + "\n")
    return name


def test_a_folder_a_list_file_and_an_archive_are_handed_to_ingest_as_they_are(digit_folders, tmp_path):
    out = tmp_path / "out"
    folder = embedded.job_source(str(digit_folders), out)
    assert folder == common_pb2.DataSource(local_path=str(digit_folders))
    listed = digit_folders / write_list(digit_folders)
    assert embedded.job_source(str(listed), out) == common_pb2.DataSource(local_path=str(listed))
    # A list file inside a folder source, named by --list-file (or the spec's source.list_file).
    assert embedded.job_source(str(digit_folders), out, "list.tsv").list_file == "list.tsv"
    for archive in (tmp_path / "digits.zip", tmp_path / "digits.tar.gz", tmp_path / "digits.tar"):
        if archive.suffix == ".zip":
            with zipfile.ZipFile(archive, "w") as zf:
                zf.write(digit_folders / "3" / next(iter(sorted((digit_folders / "3").iterdir()))).name,
                         "3/a.png")
        else:
            with tarfile.open(archive, "w:gz" if archive.name.endswith(".gz") else "w") as tar:
                tar.add(digit_folders / "3", arcname="3")
        assert embedded.job_source(str(archive), out) == common_pb2.DataSource(local_path=str(archive))


def test_an_unusable_source_is_refused_naming_it_before_anything_starts(digit_folders, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InvalidArgument, match=f"SOURCE: {tmp_path / 'data' / 'list.tsv'} does not exist"):
        embedded.job_source(str(tmp_path / "data" / "list.tsv"), out)
    picture = next((digit_folders / "1").iterdir())
    with pytest.raises(InvalidArgument, match=f"SOURCE: {picture} is neither a folder, a list file"):
        embedded.job_source(str(picture), out)
    listed = digit_folders / write_list(digit_folders, "other.tsv")
    with pytest.raises(InvalidArgument, match="--list-file: .*other.tsv is itself a list file"):
        embedded.job_source(str(listed), out, "list.tsv")
    with pytest.raises(InvalidArgument, match="expected s3://HOST:PORT/BUCKET/PREFIX"):
        embedded.job_source("s3://127.0.0.1:9000/bucket-only", out)
    assert not out.exists()  # nothing was written for a source that cannot be used


def test_an_object_prefix_is_copied_with_ingests_download_then_run_as_a_folder(digit_folders, tmp_path,
                                                                                 monkeypatch):
    bucket = LocalObjectStore(tmp_path / "bucket")
    for path in sorted((digit_folders / "7").iterdir())[:5]:
        bucket.put_file(f"uploads/digits/7/{path.name}", path)
    opened = []

    def open_store(url, **credentials):
        opened.append(url)
        return bucket

    monkeypatch.setattr(embedded, "open_object_store", open_store)
    source = embedded.job_source("s3://minio.local:9000/classforge/uploads/digits", tmp_path / "out")
    assert opened == ["s3://minio.local:9000/classforge"]
    assert source.local_path == str(tmp_path / "out" / "work" / "source")
    assert len(list((tmp_path / "out" / "work" / "source" / "7").iterdir())) == 5
    with pytest.raises(InvalidArgument, match="no objects under this prefix"):
        embedded.job_source("s3://minio.local:9000/classforge/uploads/none/", tmp_path / "out")


def test_a_multi_task_list_file_goes_through_every_stage_to_a_served_model(digit_folders, tmp_path, capsys):
    listed = digit_folders / write_list(digit_folders)
    spec = common_pb2.JobSpec(
        dataset=common_pb2.DatasetOptions(val_fraction=0.15, test_fraction=0.15, seed=3),
        training=common_pb2.TrainingConfig(input_size=32, batch_size=32, backbone=common_pb2.BACKBONE_SMALL_CNN,
                                           full_stage=common_pb2.TrainingStage(epochs=2)),
        gates=common_pb2.EvaluationGates(min_accuracy=0.0))

    assert embedded.run(listed, tmp_path / "out", spec, plain=True) == 0

    out = capsys.readouterr().out
    for stage in ("ingest      done", "420 train, 90 val, 90 test images", "records     done",
                  "training    running", "training    done       26/26 steps", "evaluation  done", "deployment  done",
                  "serving classforge v1", "JOB_STATUS_SUCCEEDED", "confusion matrix", "task parity"):
        assert stage in out, f"{stage!r} missing from:\n{out}"
    assert "served model classforge v1 on test image images/" in out and "(true digit " in out
    store = tmp_path / "out" / "store"
    (report,) = store.glob("reports/*/evaluation.json")
    evaluation = json.loads(report.read_text())
    assert [t["task"] for t in evaluation["tasks"]] == ["digit", "parity"]
    assert evaluation["tasks"][0]["examples"] == 90 and evaluation["blessing"]["blessed"]
    assert list((tmp_path / "out" / "serving" / "classforge").glob("1/saved_model.pb"))

    # `classforge classify --model DIR` then works offline on the run's output.
    from services.cli import main

    image = next((digit_folders / "4").iterdir())
    assert main(["classify", "--model", str(tmp_path / "out"), "--top-k", "2", str(image)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].endswith("serving/classforge/1)") and lines[1].startswith("  digit: ")
    assert len(lines[1].split(",")) == 2
