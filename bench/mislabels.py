"""`python -m bench.mislabels`: the iteration loop measured on real data, through the platform's own
services and commands (embedded: every service in this process, a local store).

1. scikit-learn's digits (1,797 images, 8x8 upsampled to 16x16) uploaded as dataset v1 (CreateDataset)
   with a 25 % natural test split.
2. NOISE (8 %) of the distinct training images get a wrong class at random (seeded), written as
   dataset v2 by `RelabelDataset` itself, so only training labels are wrong and the test split is v1's.
3. Job A trains on v2; its test accuracy is the first run's.
4. `classforge find-mislabels` scores every train/val image of job A's records out of sample (K folds)
   and ranks them. For it and for cleanlab (`find_label_issues` on the same probabilities, and
   cleanlab's full ranking by `get_label_quality_scores`): the fraction of the flipped images within
   the top 2 x (number flipped), and the precision/recall of each flagged set.
5. The oracle review: the images in that top 2 x get their true labels (relabel:<true class>, else
   keep), `RelabelDataset` makes v3, and job B trains on v3 from job A's model (`run --from A`).

Numbers only, printed as a table or JSON (--json); nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NOISE = 0.08


def _training(epochs: int, seed: int):
    from classforge.v1 import common_pb2

    return common_pb2.TrainingConfig(
        input_size=16, batch_size=32, backbone=common_pb2.BACKBONE_SMALL_CNN, width_multiplier=0.5, seed=seed,
        optimizer=common_pb2.OPTIMIZER_ADAM, full_stage=common_pb2.TrainingStage(epochs=epochs, learning_rate=2e-3),
        # digits must not be mirrored or cut: a light box jitter only
        augmentation=common_pb2.Augmentation(crop_scale_min=0.85, crop_scale_max=1.0))


def _run_job(stub, spec) -> tuple:
    from classforge.v1 import common_pb2
    from classforge.v1 import jobs_service_pb2 as jobs_pb

    job_id = stub.SubmitJob(jobs_pb.SubmitJobRequest(spec=spec)).job_id
    for _ in stub.WatchJob(jobs_pb.WatchJobRequest(job_id=job_id), timeout=3600):
        pass
    job = stub.GetJob(jobs_pb.GetJobRequest(job_id=job_id)).job
    if job.status != common_pb2.JOB_STATUS_SUCCEEDED:
        raise SystemExit(f"bench.mislabels: job {job_id} ended {common_pb2.JobStatus.Name(job.status)}: {job.error}")
    return job


def _decisions(rows: list[tuple[str, str]]) -> bytes:
    return ("image_id,decision\n" + "".join(f"{image_id},{decision}\n" for image_id, decision in rows)).encode()


def _train_images(store, dataset_id: str) -> dict[str, int]:
    """Distinct training images of a version -> class id (train.list holds the oversampled stream)."""
    images = {}
    for line in store.get_bytes(f"datasets/{dataset_id}/train.list").decode().splitlines():
        path, label = line.split()[:2]
        images[Path(path).stem] = int(label)
    return images


def found(ranking, flipped: set[str], top: int) -> float:
    return len(set(ranking[:top]) & flipped) / len(flipped)


def precision_recall(flagged, flipped: set[str]) -> tuple[float, float, int]:
    hits = len(set(flagged) & flipped)
    return (hits / len(flagged) if len(flagged) else 0.0), hits / len(flipped), len(flagged)


def run(folds: int = 5, epochs: int = 15, seed: int = 0) -> dict:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from google.protobuf import json_format

    from classforge.v1 import common_pb2
    from classforge.v1 import ingest_service_pb2 as ingest_pb
    from classforge.v1 import ingest_service_pb2_grpc as ingest_grpc
    from classforge.v1 import jobs_service_pb2_grpc as jobs_grpc
    from services.cli import main as cli
    from services.cli import retrain_embedded
    from services.demo_data import load_digits, write_image_folders
    from services.embedded import EmbeddedPlatform
    from services.trainer import kfold

    out: dict = {"noise": NOISE, "folds": folds, "epochs": epochs}
    with tempfile.TemporaryDirectory(prefix="classforge-bench-mislabels-") as scratch:
        root = Path(scratch)
        images, labels, names = load_digits(16)
        write_image_folders(images, labels, names, root / "digits")
        platform = EmbeddedPlatform(root / "out")
        try:
            jobs = jobs_grpc.JobsServiceStub(platform.channel)
            ingest = ingest_grpc.IngestServiceStub(platform.channel)
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                cli(["--json", "dataset", "upload", str(root / "digits"), "--ingest", platform.address,
                     "--test-fraction", "0.25", "--val-fraction", "0.1", "--seed", str(seed)])
            v1 = json.loads(printed.getvalue())["ref"]["dataset_id"]

            truth = _train_images(platform.store, v1)
            rng = np.random.default_rng(seed)
            ids = sorted(truth)
            flipped = sorted(rng.choice(ids, size=round(NOISE * len(ids)), replace=False).tolist())
            wrong = {i: (truth[i] + int(rng.integers(1, 10))) % 10 for i in flipped}
            v2 = ingest.RelabelDataset(ingest_pb.RelabelDatasetRequest(dataset_id=v1, corrections=_decisions(
                [(i, f"relabel:{names[c]}") for i, c in wrong.items()]))).dataset.ref.dataset_id
            out.update(train_images=len(ids), flipped=len(flipped))

            gates = common_pb2.EvaluationGates(max_regression=1.0, max_class_regression=1.0)
            started = time.perf_counter()
            first = _run_job(jobs, common_pb2.JobSpec(source=common_pb2.DataSource(dataset_id=v2),
                                                      training=_training(epochs, seed), gates=gates))
            out["first_run_seconds"] = time.perf_counter() - started
            report = json.loads(platform.store.get_bytes(f"reports/{first.job_id}/evaluation.json"))
            out["test_images"] = report["examples"]
            out["first_run_test_accuracy"] = report["tasks"][0]["accuracy"]

            build = first.records_uri.rstrip("/").rsplit("/", 1)[-1]
            config = root / "training.json"
            config.write_text(json_format.MessageToJson(_training(epochs, seed)))
            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                code = cli(["find-mislabels", str(root / "out" / "store" / "records" / build), "--folds",
                            str(folds), "--config", str(config), "--out", str(root / "folds")])
            if code:
                raise SystemExit(f"bench.mislabels: find-mislabels exited {code}")
            out["kfold_seconds"] = time.perf_counter() - started
            scores = np.load(root / "folds" / "out_of_sample.npz")
            probabilities, given = scores["probabilities"], scores["labels"]
            image_ids = scores["image_ids"].tolist()
            flipped_set = set(flipped)
            top = 2 * len(flipped)
            ours = kfold.confident_learning(given, probabilities)
            theirs = find_label_issues(given, probabilities, return_indices_ranked_by="normalized_margin")
            quality = get_label_quality_scores(given, probabilities, method="normalized_margin")
            ranked = [image_ids[i] for i in ours.ranked]
            out["classforge_found_in_top_2x"] = found(ranked, flipped_set, top)
            # find_label_issues returns only what it flags, so its "top 2x" is its whole flagged set
            out["cleanlab_found_in_top_2x"] = found([image_ids[i] for i in theirs], flipped_set, top)
            out["cleanlab_ranking_found_in_top_2x"] = found(
                [image_ids[i] for i in np.argsort(quality, kind="stable")], flipped_set, top)
            for name, flagged in (("classforge", ours.flagged), ("cleanlab", theirs)):
                p, r, n = precision_recall([image_ids[i] for i in flagged], flipped_set)
                out[f"{name}_flagged"], out[f"{name}_precision"], out[f"{name}_recall"] = n, p, r

            # the oracle review of the top 2x, then job B from job A's model
            review = [(i, f"relabel:{names[truth[i]]}" if i in wrong else "keep") for i in ranked[:top]]
            v3 = ingest.RelabelDataset(ingest_pb.RelabelDatasetRequest(dataset_id=v2, corrections=_decisions(
                review))).dataset.ref.dataset_id
            out["labels_still_wrong_after_review"] = len(flipped_set - set(ranked[:top]))
            spec = common_pb2.JobSpec(source=common_pb2.DataSource(dataset_id=v3),
                                      training=_training(max(epochs // 2, 1), seed + 1), gates=gates)
            spec = retrain_embedded(argparse.Namespace(from_job=first.job_id, out=str(root / "out")), spec)
            started = time.perf_counter()
            second = _run_job(jobs, spec)
            out["second_run_seconds"] = time.perf_counter() - started
            report = json.loads(platform.store.get_bytes(f"reports/{second.job_id}/evaluation.json"))
            out["second_run_test_images"] = report["examples"]
            out["second_run_test_accuracy"] = report["tasks"][0]["accuracy"]
        finally:
            platform.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mislabels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.folds, args.epochs, args.seed)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for key, value in result.items():
            print(f"{key:<36} {value:.4f}" if isinstance(value, float) else f"{key:<36} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
