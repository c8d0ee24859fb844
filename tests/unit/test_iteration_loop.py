"""The iteration loop end to end on the embedded platform (every real service in one process, a local
store): a first job, its mislabels.csv reviewed, RelabelDataset into a new version, a second job from
that version starting from the first job's model (`run --from`), and `classforge lineage` over the
manifests those services wrote."""

import argparse
import json

import pytest

from classforge.v1 import common_pb2
from classforge.v1 import ingest_service_pb2 as ingest_pb
from classforge.v1 import ingest_service_pb2_grpc as ingest_grpc
from classforge.v1 import jobs_service_pb2 as jobs_pb
from classforge.v1 import jobs_service_pb2_grpc as jobs_grpc
from services import lineage
from services.cli import main, retrain_embedded
from services.common import mislabel_review
from services.demo_data import load_digits, write_image_folders


def run_job(stub, spec: common_pb2.JobSpec):
    job_id = stub.SubmitJob(jobs_pb.SubmitJobRequest(spec=spec)).job_id
    for _ in stub.WatchJob(jobs_pb.WatchJobRequest(job_id=job_id), timeout=600):
        pass
    job = stub.GetJob(jobs_pb.GetJobRequest(job_id=job_id)).job
    assert job.status == common_pb2.JOB_STATUS_SUCCEEDED, job.error
    return job


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    from services.embedded import EmbeddedPlatform

    root = tmp_path_factory.mktemp("loop")
    images, labels, names = load_digits(16)
    keep = labels < 3  # three classes are enough
    write_image_folders(images[keep], labels[keep], names[:3], root / "images", per_class=30)
    training = common_pb2.TrainingConfig(input_size=16, batch_size=16, backbone=common_pb2.BACKBONE_SMALL_CNN,
                                         width_multiplier=0.25, max_steps_per_epoch=3,
                                         full_stage=common_pb2.TrainingStage(epochs=1, learning_rate=0.05))
    gates = common_pb2.EvaluationGates(max_regression=1.0, max_class_regression=1.0)  # both get served
    out = root / "out"
    platform = EmbeddedPlatform(out, [root / "images"])
    try:
        stub = jobs_grpc.JobsServiceStub(platform.channel)
        first = run_job(stub, common_pb2.JobSpec(
            source=common_pb2.DataSource(local_path=str(root / "images")), training=training, gates=gates,
            dataset=common_pb2.DatasetOptions(val_fraction=0.2, test_fraction=0.3, seed=1),
            deploy=common_pb2.DeployOptions(deploy=True)))

        # the review: the first wrong prediction takes the model's answer, the second is dropped
        review = platform.store.get_bytes(f"reports/{first.job_id}/{mislabel_review.FILE_NAME}").decode()
        header, rows = mislabel_review.read(review)
        assert len(rows) >= 2, "the barely trained model should be wrong on at least two test images"
        lines = review.splitlines()
        decided = [lines[0], lines[1].rsplit(",", 1)[0] + f",relabel:{rows[0][1]['predicted_label']}",
                   lines[2].rsplit(",", 1)[0] + ",drop", *lines[3:]]
        relabeled = ingest_grpc.IngestServiceStub(platform.channel).RelabelDataset(ingest_pb.RelabelDatasetRequest(
            dataset_id=first.dataset.dataset_id, corrections="\n".join(decided).encode()))

        spec = common_pb2.JobSpec(source=common_pb2.DataSource(dataset_id=relabeled.dataset.ref.dataset_id),
                                  training=common_pb2.TrainingConfig(
                                      max_steps_per_epoch=3,
                                      full_stage=common_pb2.TrainingStage(epochs=1, learning_rate=0.01)),
                                  gates=gates, deploy=common_pb2.DeployOptions(deploy=True))
        spec = retrain_embedded(argparse.Namespace(from_job=first.job_id, out=str(out)), spec)  # run --from
        second = run_job(stub, spec)
        yield platform.store, out, first, second, relabeled, rows
    finally:
        platform.stop()


def test_the_second_job_starts_from_the_first_model_on_the_relabeled_version(loop):
    store, out, first, second, relabeled, rows = loop
    assert second.spec.training.initial_weights_uri == f"job://{first.job_id}"
    assert second.spec.training.backbone == common_pb2.BACKBONE_SMALL_CNN  # the architecture came along
    model = json.loads(store.get_bytes(f"models/{second.job_id}/manifest.json"))
    assert model["initial_weights"]["job_id"] == first.job_id and model["initial_weights"]["whole_model"]
    history = json.loads(store.get_bytes(f"models/{second.job_id}/history.json"))
    assert {record["stage"] for record in history} == {2}  # same classes: straight to fine-tuning
    assert relabeled.relabeled_count == 1 and relabeled.dropped_count == 1
    # the test split of the new version is the old one minus the dropped image
    evaluations = [json.loads(store.get_bytes(f"reports/{job.job_id}/evaluation.json")) for job in (first, second)]
    assert evaluations[1]["examples"] == evaluations[0]["examples"] - 1


def test_lineage_follows_the_manifests_back_to_the_parent_dataset(loop, capsys):
    store, out, first, second, relabeled, rows = loop
    links = {link.kind: link for link in lineage.trace(store, second.job_id)}
    assert links["dataset"].ident == relabeled.dataset.ref.dataset_id
    assert links["dataset"].facts["version"] == 2 and links["dataset"].facts["corrections"] == {
        "relabeled": 1, "dropped": 1, "kept": len(rows) - 2}
    assert links["parent dataset"].ident == first.dataset.dataset_id and links["parent dataset"].facts["version"] == 1
    assert links["records"].ident and links["records"].ident == second.records_uri.rstrip("/").rsplit("/", 1)[-1]
    assert links["model"].facts["started_from"] == {"job_id": first.job_id, "whole_model": True}
    assert links["report"].facts["split"] == "test"
    assert links["served"].ident == "classforge v2" and links["served"].facts["serving_now"]
    older = {link.kind: link for link in lineage.trace(store, first.job_id)}
    assert older["served"].ident == "classforge v1" and not older["served"].facts["serving_now"]
    assert "parent dataset" not in older and "started_from" not in older["model"].facts

    assert main(["lineage", second.job_id, "--store", str(out / "store")]) == 0
    text = capsys.readouterr().out
    order = [text.index(f"  {kind} ") for kind in ("dataset", "parent dataset", "records", "model", "report",
                                                   "served")]
    assert order == sorted(order)
    assert f"started from job {first.job_id}'s whole model" in text and "serving now" in text
    assert "review: relabeled 1, dropped 1" in text

    assert main(["--json", "lineage", "no-such-job", "--store", str(out / "store")]) == 1
    missing = json.loads(capsys.readouterr().out)
    assert all(link["missing"] for link in missing)
