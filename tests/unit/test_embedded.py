"""`classforge run`: every service in one process, a real (tiny) job from folders to a served model."""

import json

from classforge.v1 import common_pb2
from services import embedded
from services.common.sample_data import load_digits, write_image_folders


def test_a_folder_goes_through_every_stage_to_a_served_model(tmp_path, capsys):
    images, labels, names = load_digits()
    write_image_folders(images, labels, names, tmp_path / "images", per_class=60)
    spec = common_pb2.JobSpec(
        dataset=common_pb2.DatasetOptions(val_fraction=0.15, test_fraction=0.15, seed=3),
        training=common_pb2.TrainingConfig(input_size=32, batch_size=32, backbone=common_pb2.BACKBONE_SMALL_CNN,
                                           full_stage=common_pb2.TrainingStage(epochs=2)),
        gates=common_pb2.EvaluationGates(min_accuracy=0.0))

    assert embedded.run(tmp_path / "images", tmp_path / "out", spec) == 0

    out = capsys.readouterr().out
    for stage in ("dataset_prepared", "records_built", "training: stage 2 epoch 2", "training_completed",
                  "evaluation_completed", "model_deployed", "JOB_STATUS_SUCCEEDED", "confusion matrix"):
        assert stage in out, f"{stage!r} missing from:\n{out}"
    assert "served model classforge v1 on 0/" in out
    store = tmp_path / "out" / "store"
    (report,) = store.glob("reports/*/evaluation.json")
    evaluation = json.loads(report.read_text())
    assert evaluation["tasks"][0]["examples"] == 90 and evaluation["blessing"]["blessed"]
    assert list((tmp_path / "out" / "serving" / "classforge").glob("1/saved_model.pb"))

    # `classforge classify --model DIR` then works offline on the run's output.
    from services.cli import main

    image = next((tmp_path / "images" / "4").iterdir())
    assert main(["classify", "--model", str(tmp_path / "out"), "--top-k", "2", str(image)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].endswith("serving/classforge/1)") and lines[1].startswith("  label: ")
    assert len(lines[1].split(",")) == 2
