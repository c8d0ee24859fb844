"""`classforge train RECORDS --config FILE --out DIR` end to end on a tiny records directory."""

import argparse
import json

import pytest

from services.common.storage import LocalObjectStore
from services.trainer.cli import register

builder = pytest.importorskip("services.tfrecords.builder")
sample = pytest.importorskip("tests.support.sample_dataset")


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="classforge")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_train_command_writes_a_saved_model_and_a_second_run_does_nothing(tmp_path, capsys):
    store = LocalObjectStore(tmp_path / "data")
    items = sample.digits_items(200, size=16)
    sample.write_dataset(store, "d", {"train": items[:160], "val": items[160:], "test": []}, sample.DIGIT_TASKS[:1])
    prefix = builder.RecordsBuilder(workers=1).build(store, "d", builder.BuildOptions(min_shards=2)).prefix
    config = tmp_path / "train.yaml"
    config.write_text("input_size: 16\nbatch_size: 32\nbackbone: small_cnn\nwidth_multiplier: 0.25\n"
                      "max_steps_per_epoch: 2\nfull_stage: {epochs: 2}\n")
    out = tmp_path / "out"
    assert run_cli(["train", str(tmp_path / "data" / prefix), "--config", str(config), "--out", str(out)]) == 0
    assert (out / "saved_model" / "saved_model.pb").exists() and (out / "training_curves.png").exists()
    assert len(json.loads((out / "history.json").read_text())) == 2
    assert "done:" in capsys.readouterr().out
    assert run_cli(["train", str(tmp_path / "data" / prefix), "--config", str(config), "--out", str(out)]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_bad_config_is_reported_with_the_field(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("input_size: 3\n")
    assert run_cli(["train", str(tmp_path), "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    assert "config.input_size" in capsys.readouterr().err
