"""`classforge dataset prepare` end to end on scikit-learn's digits written as label folders."""

import json
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from services.common import image_hash
from services.demo_data import load_digits, write_image_folders
from services.ingest import cli


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> Path:
    """All 1,797 digits, with digit 0 cut to 10 images so that balancing has work to do."""
    images, labels, names = load_digits()
    keep = np.ones(len(labels), bool)
    keep[np.flatnonzero(labels == 0)[10:]] = False
    root = tmp_path_factory.mktemp("digits") / "images"
    write_image_folders(images[keep], labels[keep], names, root)
    return root


def read_list(path: Path) -> list[tuple[str, int]]:
    return [(line.split()[0], int(line.split()[1])) for line in path.read_text().splitlines()]


def test_prepare_writes_lists_labels_report_and_manifest(digits_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["dataset", "prepare", str(digits_dir), "--out", str(out), "--seed", "7", "--test-fraction", "0.1",
                   "--max-ratio", "5"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"1629 images written to {out}" in printed and "largest/smallest training class" in printed

    assert {p.name for p in out.iterdir()} >= {"images", "labels.json", "train.list", "val.list", "test.list",
                                               "report.json", "report.md", "manifest.json"}
    labels = json.loads((out / "labels.json").read_text())
    assert labels["tasks"][0]["classes"] == [str(d) for d in range(10)]
    train, val, test = (read_list(out / name) for name in ("train.list", "val.list", "test.list"))
    for path, label in train + val + test:
        assert (out / path).is_file() and 0 <= label <= 9
    assert not {p for p, _ in train} & {p for p, _ in val} and not {p for p, _ in val} & {p for p, _ in test}

    natural = {0: 10, **{d: c for d, c in Counter(int(p.parent.name) for p in digits_dir.rglob("*.png")).items()
                         if d}}
    val_counts, test_counts, train_counts = (Counter(label for _, label in rows) for rows in (val, test, train))
    for digit, n in natural.items():  # validation and test: natural, stratified
        assert val_counts[digit] == test_counts[digit] == int(n * 0.1 + 0.5)
    assert max(train_counts.values()) / min(train_counts.values()) <= 5
    assert train_counts[0] == -(-max(train_counts.values()) // 5) > 8  # the 8 training zeros were repeated
    assert len({p for p, label in train if label == 0}) == 8

    # hashes.tsv: the difference hash of every image, the evaluator's own function on the stored bytes
    hashes = image_hash.parse_hashes((out / image_hash.HASHES_FILE).read_bytes())
    stored = sorted((out / "images").rglob("*.png"))
    assert sorted(hashes) == [p.stem for p in stored] and len(stored) == len({p for p, _ in train + val + test})
    assert all(hashes[p.stem] == image_hash.dhash(p.read_bytes()) for p in stored)

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"][image_hash.HASHES_FILE]["bytes"] == (out / image_hash.HASHES_FILE).stat().st_size
    assert manifest["counts"] | {"train": len(train), "val": len(val), "test": len(test)} == manifest["counts"]
    assert manifest["options"]["seed"] == 7 and manifest["dataset_id"] == "out"
    report = json.loads((out / "report.json").read_text())
    assert report["balance"]["ratio_after"] <= 5 < report["balance"]["ratio_before"]
    assert "| 0 | 0 | 0 | 10 |" in (out / "report.md").read_text()

    # the same seed again (over the old output) gives the same lists; another seed does not
    assert cli.main(["dataset", "prepare", str(digits_dir), "--out", str(out), "--seed", "7", "--test-fraction",
                     "0.1"]) == 0
    assert read_list(out / "train.list") == train and read_list(out / "val.list") == val
    other = tmp_path / "other"
    assert cli.main(["dataset", "prepare", str(digits_dir), "--out", str(other), "--seed", "8", "--test-fraction",
                     "0.1"]) == 0
    assert read_list(other / "train.list") != train


def test_prepare_from_a_zip_archive_and_from_a_multi_task_list_file(digits_dir, tmp_path, capsys):
    archive = tmp_path / "digits.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(digits_dir.rglob("*.png"))[:300]:
            zf.write(path, f"images/{path.relative_to(digits_dir).as_posix()}")
        zf.writestr("../escape.png", b"x")
    assert cli.main(["--json", "dataset", "prepare", str(archive), "--out", str(tmp_path / "z")]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["counts"]["images"] == 300 and manifest["counts"]["rejected"] == 1
    assert manifest["source"]["kind"] == "archive"

    rows = ["path digit parity"]
    for path in sorted(digits_dir.rglob("*.png"))[::7]:
        digit = int(path.parent.name)
        rows.append(f"{path.relative_to(digits_dir).as_posix()} {digit} {'even' if digit % 2 == 0 else '-'}")
    (digits_dir / "labels.txt").write_text("\n".join(rows) + "\n")
    try:
        assert cli.main(["dataset", "prepare", str(digits_dir / "labels.txt"), "--out", str(tmp_path / "m")]) == 0
    finally:
        (digits_dir / "labels.txt").unlink()
    labels = json.loads((tmp_path / "m" / "labels.json").read_text())
    assert [t["name"] for t in labels["tasks"]] == ["digit", "parity"] and labels["tasks"][1]["classes"] == ["even"]
    lines = [line.split() for line in (tmp_path / "m" / "train.list").read_text().splitlines()]
    assert all(len(parts) == 3 for parts in lines)
    assert all(parts[2] == ("0" if int(parts[1]) % 2 == 0 else "-1") for parts in lines)


def test_prepare_reports_problems_without_a_traceback(digits_dir, tmp_path, capsys):
    assert cli.main(["dataset", "prepare", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "o")]) == 1
    assert f"SOURCE: {tmp_path / 'nothing-here'} does not exist" in capsys.readouterr().err
    picture = tmp_path / "picture.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert cli.main(["dataset", "prepare", str(picture), "--out", str(tmp_path / "o")]) == 1
    assert f"{picture} is neither a folder, a list file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    empty = tmp_path / "empty"
    (empty / "cats").mkdir(parents=True)
    (empty / "cats" / "a.png").write_bytes(b"")
    (empty / "dogs").mkdir()
    (empty / "dogs" / "b.png").write_text("not an image")
    assert cli.main(["dataset", "prepare", str(empty), "--out", str(tmp_path / "o")]) == 1
    assert "the dataset would be empty" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--test-fraction"):
        cli.main(["dataset", "prepare", str(digits_dir), "--out", str(tmp_path / "o"), "--val-fraction", "0.5",
                  "--test-fraction", "0.5"])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("someone's file")
    with pytest.raises(SystemExit, match="not empty"):
        cli.main(["dataset", "prepare", str(digits_dir), "--out", str(busy)])


def test_register_adds_the_commands_to_a_parser():
    import argparse

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["dataset", "prepare", "src", "--out", "dst", "--max-ratio", "3", "--seed", "4"])
    assert args.func is cli.cmd_prepare and args.max_ratio == 3 and args.seed == 4 and args.val_fraction == 0.1
    assert parser.parse_args(["datasets"]).func is cli.cmd_list
    assert parser.parse_args(["dataset", "report", "ds-1"]).dataset_id == "ds-1"
