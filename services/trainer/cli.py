"""`classforge train RECORDS --config FILE --out DIR`: trains on a local records directory without any
service, Kafka or MinIO: the same loop, checkpoints and export as the trainer service.

DIR receives checkpoints/, saved_model/, model.keras, history.json, training_curves.png, labels.json, config.json,
model.weights.h5, backbone.weights.h5 and manifest.json (last). Running the same command again resumes
from DIR/checkpoints (or does nothing if DIR/manifest.json exists); Ctrl-C stops at the next step with a
checkpoint.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from classforge.v1 import common_pb2
from services.common.errors import ClassforgeError
from services.common.storage import LocalObjectStore


def register(subparsers) -> None:
    train = subparsers.add_parser("train", help="train a classifier on a local records directory",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("records", help="records directory (records/<build_id>/ holding manifest.json)")
    train.add_argument("--config", help="TrainingConfig as YAML or JSON (unset fields: the recipe's choices)")
    train.add_argument("--out", required=True, help="output directory (checkpoints, SavedModel, history)")
    train.add_argument("--print-config", action="store_true", help="print the effective config and exit")
    train.set_defaults(func=cmd_train)

    find = subparsers.add_parser(
        "find-mislabels", help="score every train/val image out of sample (K folds) and write mislabels.csv",
        description="Trains K models, each on K-1 stratified folds of the records' distinct train and val "
                    "images, scores the fold it never saw and flags the images whose confident class is not "
                    "their label (confident learning). Writes OUT/mislabels.csv (the review file `classforge "
                    "dataset relabel` reads) and OUT/out_of_sample.npz (probabilities, labels, image ids).")
    find.add_argument("records", help="records directory (records/<build_id>/ holding manifest.json)")
    find.add_argument("--folds", type=int, default=5, help="K (default 5)")
    find.add_argument("--config", help="TrainingConfig as YAML or JSON: the recipe each fold trains with")
    find.add_argument("--out", required=True, help="output directory")
    find.set_defaults(func=cmd_find_mislabels)


def cmd_train(args) -> int:
    from services.common.durations import parse_duration
    from services.trainer import export
    from services.trainer.config import load_config, to_json, with_defaults
    from services.trainer.data import open_records_directory
    from services.trainer.loop import Hooks, Trainer
    from services.trainer.recipe import chosen_fields, detect_hardware, facts_of, plan_training

    try:
        requested = load_config(args.config) if args.config else common_pb2.TrainingConfig()
        with_defaults(requested)  # the explicit fields are checked before any data is read
        data = open_records_directory(args.records, requested)
        plan = plan_training(requested, facts_of(data), detect_hardware())
        config = plan.config
        if args.print_config:
            print(to_json(config))
            return 0
        print(plan.text(), flush=True)
        out = Path(args.out).resolve()
        store = LocalObjectStore(out)
        if store.exists("manifest.json"):
            print(f"classforge: {out} already holds a finished run (manifest.json); nothing to do")
            return 0
        stop = threading.Event()
        previous = signal.signal(signal.SIGINT, lambda *_: (stop.set(), print(
            "\nstopping at the next step (a checkpoint is written) …", file=sys.stderr)))

        class Say(Hooks):
            def progress(self, progress, epoch_end):
                if not epoch_end:
                    print(f"  stage {progress.stage} epoch {progress.epoch} step {progress.step}: "
                          f"loss {progress.total_loss:.4f} ({progress.images_per_second:.0f} img/s)", flush=True)

        try:
            trainer = Trainer(config, data, store, "", out / ".work", hooks=Say(), stop_event=stop,
                              progress_seconds=30.0, log_fn=lambda text: print(text, flush=True),
                              time_budget_seconds=parse_duration(config.time_budget),
                              recipe_fields=chosen_fields(plan.choices))
            result = trainer.run()
            config = trainer.config  # sized by the time budget, if any
        finally:
            signal.signal(signal.SIGINT, previous)
        if result.status == "stopped":
            print(f"stopped; checkpoint {result.checkpoint_uri}; run the same command again to resume")
            return 130
        uris = export.publish(result.network, data.label_map(), to_json(config), result.history, config.input_size,
                              store, "", out / ".work", {"records": str(args.records),
                                                         "resumed_from": result.resumed_from})
        last = result.history[-1] if result.history else {}
        print(f"done: {uris['model']}  (val_accuracy {last.get('val_accuracy', float('nan')):.4f})")
        return 0
    except ClassforgeError as exc:
        print(f"classforge: {exc.message}", file=sys.stderr)
        return 2


def cmd_find_mislabels(args) -> int:
    import numpy as np

    from services.common import mislabel_review
    from services.trainer import kfold
    from services.trainer.config import load_config, with_defaults
    from services.trainer.data import open_records_directory

    try:
        config = with_defaults(load_config(args.config) if args.config else common_pb2.TrainingConfig())
        data = open_records_directory(args.records, config)
        pool = kfold.gather_pool(data)
        out = Path(args.out).resolve()
        probabilities = kfold.out_of_sample_probabilities(config, data, pool, args.folds, out / ".work",
                                                          say=lambda text: print(text, flush=True))
    except ClassforgeError as exc:
        print(f"classforge: {exc.message}", file=sys.stderr)
        return 2
    task = data.tasks[0]
    flags = kfold.confident_learning(pool.labels[:, 0], probabilities)
    written = mislabel_review.write(out / mislabel_review.FILE_NAME,
                                    kfold.review_rows(pool, task.name, task.classes, probabilities, flags))
    np.savez_compressed(out / "out_of_sample.npz", probabilities=probabilities, labels=pool.labels[:, 0],
                        image_ids=np.asarray(pool.image_ids))
    print(f"{written} of {len(pool.labels)} images flagged; review {out / mislabel_review.FILE_NAME}")
    return 0
