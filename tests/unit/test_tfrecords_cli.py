"""`classforge records build DATASET --out DIR`, end to end: the subcommand as registered on a parser
like the classforge one, and as a separate process running the worker pool."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from services.common.records.reader import RecordsReader
from services.common.storage import LocalObjectStore
from services.tfrecords import cli
from tests.support.sample_dataset import DIGIT_TASKS, digits_items, oversample, write_dataset

REPO = Path(__file__).resolve().parents[2]


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="classforge")
    parser.add_argument("--json", action="store_true")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_records_build_from_a_dataset_directory_into_out(tmp_path, capsys):
    store = LocalObjectStore(tmp_path / "prepared")
    items = digits_items(30)
    write_dataset(store, "digits", {"train": items[:24], "val": items[24:]}, DIGIT_TASKS[:1])
    out = tmp_path / "out"
    assert run(["records", "build", str(tmp_path / "prepared/datasets/digits"), "--out", str(out),
                "--min-shards", "2"]) == 0
    printed = capsys.readouterr().out
    build_dir = next((out / "records").iterdir())
    assert printed.startswith(f"built: {build_dir.name} -> {build_dir}")
    assert sorted(p.name for p in build_dir.iterdir()) == [
        "manifest.json", "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord",
        "val-00000-of-00002.tfrecord", "val-00001-of-00002.tfrecord"]
    reader = RecordsReader.from_directory(build_dir)
    assert len(list(reader.dataset("train", decode=False).as_numpy_iterator())) == 24

    assert run(["--json", "records", "build", "digits", "--store", str(tmp_path / "prepared"), "--out", str(out),
                "--min-shards", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["built"] is False and summary["build_id"] == build_dir.name
    assert summary["splits"]["val"] == {"examples": 6, "shards": 2, "bytes": reader.manifest["splits"]["val"]["bytes"]}


def test_records_build_errors_say_what_is_wrong(tmp_path, capsys):
    assert run(["records", "build", "missing", "--out", str(tmp_path)]) == 1
    assert "NotFound: dataset 'missing' not found" in capsys.readouterr().err
    assert run(["records", "build", "missing", "--out", str(tmp_path), "--jpeg-quality", "50"]) == 1
    assert "options.jpeg_quality: only applies when re-encoding" in capsys.readouterr().err


_SCRIPT = """
import argparse, sys
import services.tfrecords.builder as builder
from services.tfrecords import cli

class CountingPool(builder.WorkerPool):
    def __init__(self, workers):
        print(f"pool of {workers}", file=sys.stderr)
        super().__init__(workers)

builder.WorkerPool = CountingPool
parser = argparse.ArgumentParser()
parser.add_argument("--json", action="store_true")
cli.register(parser.add_subparsers())
args = parser.parse_args(["--json", "records", "build", "many", "--out", sys.argv[1], "--workers", "2"])
sys.exit(args.func(args))
"""


def test_records_build_as_a_process_with_worker_processes(tmp_path):
    """A script without a __main__ guard starts the encoding worker processes fine (no multiprocessing)."""
    store = LocalObjectStore(tmp_path / "s")
    items = digits_items(50)
    write_dataset(store, "many", {"train": oversample(items, [110] * 50)}, DIGIT_TASKS[:1])  # 5,500 lines
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / "s")], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "pool of 2" in done.stderr
    summary = json.loads(done.stdout)
    assert summary["built"] and summary["splits"]["train"]["examples"] == 5500
    reader = RecordsReader(store, f"records/{summary['build_id']}")
    assert len(list(reader.dataset("train", batch_size=1000, decode=False).as_numpy_iterator())) == 6
