"""`python -m bench.quality`: what the automatic recipe reaches on public data within a time budget, run
through the whole platform (embedded: ingest, records, trainer, evaluator, every service in this
process), with no training config beyond `recipe: auto`, a budget and, for clothes, `mirror_invariant`.

Cases (`--cases` picks some):
- digits: scikit-learn's 1,797 digits as their native 8x8 PNGs (the recipe upsamples them), a 25 %
  natural test split, budget 2m. Target >= 0.97.
- fashion: Fashion-MNIST, all 70,000 images (the Debian package), a natural 1/7 test split (10,000
  images), budget 5m. Target >= 0.90.
- fashion-full: the same as fashion with no budget: the recipe's whole schedule. Target >= 0.93.
- imbalanced: Fashion-MNIST subsampled so that class sizes fall geometrically from 7,000 to 500 (14:1),
  budget 5m. Ingest's test split inherits the imbalance; Fashion-MNIST's natural test split is uniform,
  so the accuracy it would give is the balanced accuracy (the mean per-class recall), reported as
  such. Target: no class recall below 0.5.

Per case: test accuracy, balanced accuracy, the lowest class recall, the budget and the time from the
records being built to the evaluation's end (the part the budget covers, plus the trainer's records
download), its ratio to the budget, and the plan's choices. Numbers only; nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CASES = ("digits", "fashion", "imbalanced", "fashion-full")
DEFAULT_CASES = ("digits", "fashion", "imbalanced")  # fashion-full takes 10-20 min on 2 cores


def _write_case(name: str, folder: Path):
    """Writes the case's images as one folder per label; returns (dataset options, training config)."""
    from classforge.v1 import common_pb2
    from services.demo_data import FASHION_MNIST_CLASSES, load_fashion_mnist, write_image_folders

    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
        write_image_folders(images, digits.target, tuple(str(d) for d in range(10)), folder)
        return (common_pb2.DatasetOptions(test_fraction=0.25, val_fraction=0.1, seed=1),
                common_pb2.TrainingConfig(recipe="auto", time_budget="2m"))
    train_images, train_labels = load_fashion_mnist("train")
    test_images, test_labels = load_fashion_mnist("test")
    images = np.concatenate([train_images, test_images])
    labels = np.concatenate([train_labels, test_labels])
    if name == "imbalanced":
        sizes = np.round(7000 * (1 / 14) ** (np.arange(10) / 9)).astype(int)  # 7000 … 500: 14:1
        keep = np.concatenate([np.flatnonzero(labels == c)[:n] for c, n in enumerate(sizes)])
        images, labels = images[keep], labels[keep]
    write_image_folders(images, labels, FASHION_MNIST_CLASSES, folder)
    return (common_pb2.DatasetOptions(test_fraction=1 / 7, val_fraction=0.05, seed=7),
            common_pb2.TrainingConfig(recipe="auto", time_budget="" if name == "fashion-full" else "5m",
                                      mirror_invariant=True))


def run_case(name: str, scratch: Path) -> dict:
    from classforge.v1 import common_pb2
    from classforge.v1 import jobs_service_pb2 as jobs_pb
    from classforge.v1 import jobs_service_pb2_grpc as jobs_grpc
    from services.common.durations import parse_duration
    from services.embedded import EmbeddedPlatform

    folder = scratch / name / "images"
    dataset, training = _write_case(name, folder)
    platform = EmbeddedPlatform(scratch / name / "out", [folder])
    try:
        stub = jobs_grpc.JobsServiceStub(platform.channel)
        started = time.monotonic()
        spec = common_pb2.JobSpec(source=common_pb2.DataSource(local_path=str(folder)), dataset=dataset,
                                  training=training)
        job_id = stub.SubmitJob(jobs_pb.SubmitJobRequest(spec=spec)).job_id
        times: dict[str, float] = {}
        for reply in stub.WatchJob(jobs_pb.WatchJobRequest(job_id=job_id), timeout=7200):
            kind = reply.event.WhichOneof("payload")
            times.setdefault(kind, reply.event.occurred_at.ToDatetime().timestamp())
        job = stub.GetJob(jobs_pb.GetJobRequest(job_id=job_id)).job
        wall = time.monotonic() - started
        if job.status != common_pb2.JOB_STATUS_SUCCEEDED:
            return {"case": name, "status": common_pb2.JobStatus.Name(job.status), "error": job.error}
        evaluation = json.loads(platform.store.get_bytes(f"reports/{job_id}/evaluation.json"))
        model = json.loads(platform.store.get_bytes(f"models/{job_id}/manifest.json"))
    finally:
        platform.stop()
    task = evaluation["tasks"][0]
    budget = parse_duration(training.time_budget) if training.time_budget else 0.0
    covered = times["evaluation_completed"] - times["records_built"]
    plan = model.get("plan", {})
    return {"case": name, "status": "SUCCEEDED", "test_images": evaluation["examples"],
            "accuracy": task["accuracy"], "balanced_accuracy": task["balanced_accuracy"],
            "lowest_class_recall": min(c["recall"] for c in task["per_class"]),
            "budget_seconds": budget, "records_to_evaluated_seconds": round(covered, 1),
            "budget_used": round(covered / budget, 3) if budget else None, "pipeline_wall_seconds": round(wall, 1),
            "planned_epochs": plan.get("planned_epochs"),
            "planned_training_seconds": round(plan.get("planned_training_seconds", 0.0), 1),
            "plan": {c.get("field"): c.get("value") for c in plan.get("choices", [])}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES),
                        help=f"comma-separated, of {', '.join(CASES)} (default {','.join(DEFAULT_CASES)})")
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; known: {', '.join(CASES)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="classforge-bench-quality-") as scratch:
        for name in cases:
            print(f"running {name} …", file=sys.stderr, flush=True)
            results.append(run_case(name, Path(scratch)))
            print(json.dumps(results[-1]), flush=True)
    return 0 if all(r["status"] == "SUCCEEDED" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
