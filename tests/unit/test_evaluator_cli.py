"""`classforge evaluate MODEL RECORDS --out DIR` (records read through a stand-in for the reader)."""

import argparse
import json

from services.evaluator import cli
from tests.support.colour_model import COLOURS, ColourRecords, write_colour_model

CLASSES = list(COLOURS)


def parse(argv):
    parser = argparse.ArgumentParser(prog="classforge")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def fake_open(path, cache_dir, batch_size):
    return ColourRecords(None, str(path), cache_dir, batch_size)


def test_evaluate_writes_the_report_and_gates_the_exit_status(tmp_path, capsys):
    model = tmp_path / "models" / "job"
    write_colour_model(model / "saved_model", CLASSES)
    (model / "history.json").write_text(json.dumps([{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 0.5}]))
    out = tmp_path / "report"
    args = parse(["evaluate", str(model), str(tmp_path / "records"), "--out", str(out), "--min-accuracy", "0.8"])
    assert args.func(args, open_records=fake_open) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("blessed\n") and "label: accuracy 0.9000 on 30 test images" in printed
    document = json.loads((out / "evaluation.json").read_text())
    assert document["blessing"]["blessed"] and (out / "index.html").is_file()
    assert document["plots"]["training_curves"] == "plots/training_curves.png"

    # a stricter gate, and the previous report as the baseline: same numbers, so no regression
    args = parse(["evaluate", str(model / "saved_model"), "records", "--out", str(tmp_path / "r2"),
                  "--min-accuracy", "0.95", "--baseline", str(out), "--fail-if-not-blessed"])
    assert args.func(args, open_records=fake_open) == 1
    printed = capsys.readouterr().out
    assert "FAIL accuracy 0.9000 < min_accuracy 0.9500" in printed and "change +0.0000" in printed


def test_a_folder_without_a_saved_model_is_refused(tmp_path):
    args = parse(["evaluate", str(tmp_path), "records", "--out", str(tmp_path / "out")])
    try:
        args.func(args, open_records=fake_open)
    except SystemExit as exc:
        assert "holds no SavedModel" in str(exc)
    else:
        raise AssertionError("expected SystemExit")


def test_evaluate_on_real_records_read_through_the_tfrecords_reader(tmp_path, capsys):
    sample = __import__("pytest").importorskip("tests.support.sample_dataset")
    from services.common.storage import LocalObjectStore
    from services.tfrecords.builder import BuildOptions, RecordsBuilder

    store = LocalObjectStore(tmp_path / "store")
    items = sample.digits_items(60)
    conflict = (items[0][0], ((items[0][1][0] + 1) % 10,))  # the same image once more, another label
    sample.write_dataset(store, "digits", {"train": items[:20], "test": [*items[20:], items[0], conflict]},
                         sample.DIGIT_TASKS[:1])
    build = RecordsBuilder(workers=1).build(store, "digits", BuildOptions(min_shards=2))
    model = write_colour_model(tmp_path / "model" / "saved_model", [str(d) for d in range(10)], task="digit")
    out = tmp_path / "report"
    args = parse(["evaluate", str(model.parent), str(store.root / build.prefix), "--out", str(out)])
    assert args.func(args) == 0
    document = json.loads((out / "evaluation.json").read_text())
    assert document["split"] == "test" and document["examples"] == 42
    assert document["records"]["build_id"] == build.build_id
    assert sum(c["support"] for c in document["tasks"][0]["per_class"]) == 42
    exact = [d for d in document["duplicates"] if d["kind"] == "exact"]
    assert len(exact) == 1 and exact[0]["a"]["source_id"] == exact[0]["b"]["source_id"]
    assert (out / exact[0]["a"]["thumbnail"]).is_file()
    assert "report: " in capsys.readouterr().out
