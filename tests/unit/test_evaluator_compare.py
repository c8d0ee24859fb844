"""Comparing two runs: the pure comparison (deltas, confusion changes, flips, test-set differences,
spec diff), the domain on a local store (two real evaluations of colour models), the RPC and the CLI."""

import json

import grpc
import pytest

from classforge.v1 import common_pb2
from classforge.v1 import evaluator_service_pb2 as pb
from classforge.v1 import evaluator_service_pb2_grpc as pb_grpc
from services.cli import main as cli_main
from services.common.grpc_server import GrpcServer
from services.evaluator import compare
from services.evaluator.main import SERVICE_NAME
from services.evaluator.predictions import Prediction
from services.evaluator.servicer import EvaluatorServicer
from tests.unit.test_evaluator_domain import run_job, world  # noqa: F401 - the fixture is shared


def _task(accuracy, recalls, counts):
    labels = ["cat", "dog"]
    return {"task": "label", "classes": labels, "accuracy": accuracy, "balanced_accuracy": accuracy,
            "top_k_accuracy": 1.0, "macro_avg": {"f1": accuracy},
            "per_class": [{"label": label, "precision": r, "recall": r, "f1": r, "support": 10}
                          for label, r in zip(labels, recalls, strict=True)],
            "confusion_matrix": {"labels": labels, "counts": counts}}


def _evaluation(job, build, accuracy, recalls, counts):
    return {"job_id": job, "records": {"build_id": build, "split": "test", "examples": 20}, "split": "test",
            "examples": 20, "tasks": [_task(accuracy, recalls, counts)], "model": {"uri": f"file:///m/{job}"}}


def _rows(pairs):
    """[(source_id, true, predicted, probability)] -> predictions of task 'label'."""
    return {"label": [Prediction(i, sid, f"{sid}.png", true, predicted, p)
                      for i, (sid, true, predicted, p) in enumerate(pairs)]}


def test_deltas_confusion_changes_and_flips_matched_by_content_hash():
    a = _evaluation("a", "r1", 0.90, [1.0, 0.8], [[10, 0], [2, 8]])
    b = _evaluation("b", "r1", 0.85, [0.7, 1.0], [[7, 3], [0, 10]])
    # B lists the images in another order: matching is by source id, not by position
    preds_a = _rows([("h1", "cat", "cat", .9), ("h2", "dog", "cat", .8), ("h3", "cat", "cat", .7)])
    preds_b = _rows([("h3", "cat", "dog", .6), ("h1", "cat", "cat", .95), ("h2", "dog", "dog", .99)])
    c = compare.compare(a, b, preds_a, preds_b, {"training": {"epochs": 5, "lr": 0.1}},
                        {"training": {"epochs": 8, "lr": 0.1}})
    [task] = c["tasks"]
    assert task["overall"]["accuracy"] == {"a": 0.90, "b": 0.85, "delta": pytest.approx(-0.05)}
    # sorted by change: cat's recall moved 0.3, dog's 0.2
    assert [row["label"] for row in task["classes"]] == ["cat", "dog"]
    assert task["classes"][0]["recall"]["delta"] == pytest.approx(-0.3)
    changes = {(ch["true"], ch["predicted"]): (ch["delta"], ch["direction"]) for ch in task["confusion_changes"]}
    assert changes == {("cat", "dog"): (3, "grew"), ("dog", "cat"): (-2, "shrank")}
    flips = task["flips"]
    assert flips["matched"] == 3
    assert [f["source_id"] for f in flips["right_to_wrong"]] == ["h3"]
    assert [f["source_id"] for f in flips["wrong_to_right"]] == ["h2"]
    assert c["test_sets"]["same_records"] and c["test_sets"]["overlap"] == 3
    assert c["specs"][0] == {"field": "training.epochs", "a": 5, "b": 8, "differs": True}
    assert not c["specs"][1]["differs"]


def test_different_test_sets_are_described_not_compared_silently():
    a = _evaluation("a", "r1", 0.9, [1.0, 0.8], [[10, 0], [2, 8]])
    b = _evaluation("b", "r2", 0.9, [1.0, 0.8], [[10, 0], [2, 8]])
    preds_a = _rows([("h1", "cat", "cat", .9), ("h2", "dog", "dog", .8)])
    preds_b = _rows([("h2", "dog", "cat", .7), ("h9", "cat", "cat", .9), ("h8", "cat", "cat", .9)])
    c = compare.compare(a, b, preds_a, preds_b)
    sets = c["test_sets"]
    assert not sets["same_records"] and sets["overlap"] == 1 and sets["only_a"] == 1 and sets["only_b"] == 2
    assert "the test sets differ" in c["notes"][0] and "1 are in both" in c["notes"][0]
    assert c["tasks"][0]["flips"]["matched"] == 1
    assert [f["source_id"] for f in c["tasks"][0]["flips"]["right_to_wrong"]] == ["h2"]
    # without per-image predictions, only aggregates, and it says so
    c = compare.compare(a, b, None, preds_b)
    assert "cannot be matched" in c["notes"][0] and "flips" not in c["tasks"][0]


def test_the_domain_compares_two_real_evaluations_with_thumbnails_and_specs(world):  # noqa: F811
    store, bus, domain, seen, tmp_path = world
    run_job(store, bus, tmp_path, "job-a", common_pb2.EvaluationGates())
    run_job(store, bus, tmp_path, "job-b", common_pb2.EvaluationGates(min_accuracy=0.5), sharpness=-4.0)
    # every evaluation keeps what the model said about each image: the comparison's input
    rows = store.get_bytes("reports/job-a/predictions.csv").decode().splitlines()
    assert rows[0] == "index,source_id,filename,task,true,predicted,probability" and len(rows) == 31
    c = domain.compare("job-a", "job-b")
    [task] = c["tasks"]
    assert task["overall"]["accuracy"]["a"] == pytest.approx(0.9) and task["overall"]["accuracy"]["delta"] < -0.5
    # the inverted model never predicts an image's dominant colour: every image A got right flipped
    assert len(task["flips"]["right_to_wrong"]) == 27 and task["flips"]["matched"] == 30
    prefix = "comparisons/job-a__job-b/"
    keys = {info.key for info in store.list(prefix)}
    assert {prefix + "comparison.json", prefix + "index.html", prefix + "plots/training_curves.png"} <= keys
    shown = task["flips"]["right_to_wrong"][:compare.DEFAULT_FLIPS_SHOWN]
    assert all(prefix + f["thumbnail"] in keys for f in shown)
    page = store.get_bytes(prefix + "index.html").decode()
    assert shown[0]["thumbnail"] in page and "Right in A, wrong in B: 27 of 30" in page
    assert {"field": "job_spec.gates.min_accuracy", "a": None, "b": 0.5, "differs": True} in c["specs"]
    assert json.loads(store.get_bytes(prefix + "comparison.json"))["comparison_uri"] == c["comparison_uri"]


def test_compare_rpc_and_cli(world, capsys):  # noqa: F811
    store, bus, domain, seen, tmp_path = world
    run_job(store, bus, tmp_path, "job-a", common_pb2.EvaluationGates())
    run_job(store, bus, tmp_path, "job-b", common_pb2.EvaluationGates(), sharpness=-4.0)
    server = GrpcServer("evaluator-test", port=0, host="127.0.0.1", grace_seconds=1, plaintext=True)
    server.add_service(pb_grpc.add_EvaluatorServiceServicer_to_server, EvaluatorServicer(domain), SERVICE_NAME)
    server.start()
    try:
        stub = pb_grpc.EvaluatorServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
        with pytest.raises(grpc.RpcError) as caught:
            stub.CompareEvaluations(pb.CompareEvaluationsRequest(job_a="job-a", job_b="nope"), timeout=30)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            stub.CompareEvaluations(pb.CompareEvaluationsRequest(job_a="job-a"), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "job_b" in caught.value.details()
        reply = stub.CompareEvaluations(pb.CompareEvaluationsRequest(job_a="job-a", job_b="job-b"), timeout=60)
        assert reply.same_test_images and reply.tasks[0].right_to_wrong == 27
        accuracy = next(m for m in reply.tasks[0].overall if m.metric == "accuracy")
        assert accuracy.a == pytest.approx(0.9) and accuracy.delta < -0.5
        assert reply.comparison_uri == store.uri("comparisons/job-a__job-b") + "/"
    finally:
        server.stop()
    # the command on the local store, in this process (no service)
    assert cli_main(["compare", "job-a", "job-b", "--store", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "label: accuracy 0.9000 -> " in out and "27 right->wrong" in out
    assert "comparisons/job-a__job-b/index.html" in out
    with pytest.raises(SystemExit, match="holds no reports/"):
        cli_main(["compare", "job-a", "job-b", "--store", str(tmp_path)])
