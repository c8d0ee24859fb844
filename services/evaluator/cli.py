"""`classforge evaluate MODEL RECORDS --out DIR`: the evaluator as a command, on local files.

MODEL is a model folder (the trainer's models/<job>/ layout, holding saved_model/) or a SavedModel
folder itself; RECORDS is a records build folder (…/records/<build_id>/, with manifest.json). The report
(evaluation.json, plots, gallery/, mislabels/, cams/, index.html) is written to DIR. Exit status 0,
or 1 with --fail-if-not-blessed when the gate said no; 2 for a problem with the inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from google.protobuf import json_format

from classforge.v1 import common_pb2
from services.common.channels import add_tls_flags
from services.common.errors import ClassforgeError
from services.evaluator import blessing, report

DEFAULT_EVALUATOR = "127.0.0.1:50055"
COMPARE_DOC = """`classforge compare JOB_A JOB_B`: what changed from run A to run B.

Overall and per-class accuracy, precision and recall with deltas (largest change first), confusion
pairs that grew or shrank, the test images that flipped right->wrong and wrong->right (matched by
content hash), both training curves on one plot and the two specs side by side. When the test sets
differ it says how. Written as comparisons/JOB_A__JOB_B/{index.html,comparison.json} in the store.
"""

if TYPE_CHECKING:
    from services.evaluator.engine import Options


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate a SavedModel on a records build and write an HTML report",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model folder (holding saved_model/) or SavedModel folder")
    p.add_argument("records", help="records build folder (holding manifest.json and the shards)")
    p.add_argument("--out", required=True, help="report folder to write (replaced if it exists)")
    p.add_argument("--gates", help="YAML/JSON EvaluationGates (min_accuracy, min_class_recall, confusion_bounds, "
                                   "max_regression, max_class_regression)")
    p.add_argument("--min-accuracy", type=float, help="overrides the gates file")
    p.add_argument("--min-class-recall", type=float, help="overrides the gates file")
    p.add_argument("--baseline", help="the served model to compare with: a model/SavedModel folder (re-run on "
                                      "the same split) or a report folder / evaluation.json of the same split")
    p.add_argument("--history", help="the trainer's history.json (default: MODEL/history.json if present)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--gallery-per-cell", type=int, default=16)
    p.add_argument("--fail-if-not-blessed", action="store_true", help="exit 1 when the model is not blessed")
    p.set_defaults(func=cmd_evaluate)

    c = subparsers.add_parser("compare", help="compare two jobs' evaluations (B against A) as HTML and JSON",
                              description=COMPARE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("job_a", help="the earlier job (every delta is B - A)")
    c.add_argument("job_b")
    where = c.add_mutually_exclusive_group()
    where.add_argument("--store", help="a local object store folder (`classforge run --out OUT` keeps it in "
                                       "OUT/store): compare in this process, no service needed")
    where.add_argument("--evaluator", default=os.environ.get("CLASSFORGE_EVALUATOR_ADDR", DEFAULT_EVALUATOR),
                       help=f"evaluator service address (env CLASSFORGE_EVALUATOR_ADDR, default {DEFAULT_EVALUATOR})")
    c.add_argument("--out", default="", help="download folder for a remote comparison (default "
                                             "comparisons/JOB_A__JOB_B)")
    add_tls_flags(c)
    c.set_defaults(func=cmd_compare)


def _model_dir(path: Path) -> Path:
    """The folder holding saved_model/ (a bare SavedModel folder is accepted as is)."""
    if (path / "saved_model" / "saved_model.pb").exists():
        return path
    if (path / "saved_model.pb").exists():
        return path.parent if path.name == "saved_model" else path
    raise SystemExit(f"classforge evaluate: {path} holds no SavedModel (saved_model.pb)")


def _saved_model(model_dir: Path, given: Path) -> Path:
    return model_dir / "saved_model" if (model_dir / "saved_model" / "saved_model.pb").exists() else given


def _gates(args) -> common_pb2.EvaluationGates:
    gates = common_pb2.EvaluationGates()
    if args.gates:
        try:
            json_format.ParseDict(yaml.safe_load(Path(args.gates).read_text()) or {}, gates)
        except (OSError, yaml.YAMLError, json_format.ParseError) as exc:
            raise SystemExit(f"classforge evaluate: {args.gates}: {exc}") from None
    if args.min_accuracy is not None:
        gates.min_accuracy = args.min_accuracy
    if args.min_class_recall is not None:
        gates.min_class_recall = args.min_class_recall
    return gates


def open_local_records(path: Path, cache_dir: Path, batch_size: int):
    from services.evaluator.records import EvaluationRecords

    if not (path / "manifest.json").is_file():
        raise SystemExit(f"classforge evaluate: {path} is not a records build (no manifest.json); give the "
                         f"records/<build_id> folder")
    return EvaluationRecords.from_directory(path, batch_size)


def _baseline(path: str | None, records, options: Options) -> tuple[blessing.Baseline | None, str]:
    from services.evaluator.engine import Options, evaluate
    from services.evaluator.model import ServingModel

    if not path:
        return None, "no --baseline given"
    given = Path(path)
    evaluation_json = given / report.EVALUATION_JSON if given.is_dir() else given
    if evaluation_json.suffix == ".json" and evaluation_json.exists():
        previous = json.loads(evaluation_json.read_text())
        note = "" if previous.get("records", {}).get("split") == records.split else (
            f"baseline report was made on split {previous.get('records', {}).get('split')!r}, "
            f"this one on {records.split!r}")
        return blessing.Baseline.from_evaluation(str(given), "report", previous["tasks"]), note
    model = ServingModel(_saved_model(_model_dir(given), given))
    result = evaluate(model, records.examples(), records.tasks, None,
                      Options(batch_size=options.batch_size, artefacts=False))
    return blessing.Baseline.from_evaluation(str(given), "rerun", result.tasks), ""


def cmd_evaluate(args, open_records=open_local_records) -> int:
    # TensorFlow loads here, not when `classforge` builds its parser.
    from services.evaluator.engine import Options, evaluate
    from services.evaluator.model import ServingModel, load_cam_model

    given = Path(args.model)
    model_dir = _model_dir(given)
    out = Path(args.out)
    options = Options(batch_size=args.batch_size, gallery_per_cell=args.gallery_per_cell)
    try:
        model = ServingModel(_saved_model(model_dir, given))
        with tempfile.TemporaryDirectory(prefix="classforge-evaluate-") as cache:
            records = open_records(Path(args.records), Path(cache), args.batch_size)
            if out.exists():
                shutil.rmtree(out)
            result = evaluate(model, records.examples(), records.tasks, out, options, load_cam_model(model_dir),
                              refetch=records.examples)
            baseline, note = _baseline(args.baseline, records, options)
        decision = blessing.decide(result.tasks, _gates(args), baseline, baseline_note=note)
    except ClassforgeError as exc:
        print(f"classforge evaluate: {exc.message}", file=sys.stderr)
        return 2
    history_path = Path(args.history) if args.history else model_dir / "history.json"
    history = json.loads(history_path.read_text()) if history_path.exists() else None
    document = {
        "job_id": "", "model": {"uri": str(given.resolve())},
        "records": records.identity(), "split": records.split, "examples": result.examples,
        "tasks": result.tasks, "duplicates": result.duplicates, "cam_status": result.cam_status,
        "gates": json_format.MessageToDict(_gates(args), preserving_proto_field_name=True),
        "baseline": ({"job_id": baseline.job_id, "source": baseline.source, "tasks": baseline.tasks}
                     if baseline else None),
        "blessing": decision.to_json(), "images_per_second": result.images_per_second, "seconds": result.seconds,
        "report_uri": out.resolve().as_uri() + "/", "created_at": time.time(),
    }
    report.write(out, document, history)
    print("\n".join(decision.reasons))
    for task in result.tasks:
        print(f"{task['task']}: accuracy {task['accuracy']:.4f} on {task['examples']} {records.split} images")
    print(f"report: {(out / report.INDEX_HTML).resolve()}")
    return 1 if args.fail_if_not_blessed and not decision.blessed else 0


def cmd_compare(args) -> int:
    if args.store:
        comparison, index = _compare_in_store(Path(args.store), args.job_a, args.job_b)
    else:
        comparison, index = _compare_remote(args)
    if getattr(args, "json", False):
        print(json.dumps({k: comparison[k] for k in ("a", "b", "test_sets", "notes", "comparison_uri")}, indent=1))
    else:
        for note in comparison["notes"]:
            print(f"note: {note}")
        for task in comparison["tasks"]:
            acc = task["overall"]["accuracy"]
            flips = task.get("flips") or {}
            print(f"{task['task']}: accuracy {acc['a']:.4f} -> {acc['b']:.4f} ({100 * acc['delta']:+.2f} pts); "
                  f"{len(flips.get('right_to_wrong', []))} right->wrong, {len(flips.get('wrong_to_right', []))} "
                  f"wrong->right of {flips.get('matched', 0)} matched images")
    print(f"comparison: {index}")
    return 0


def _compare_in_store(root: Path, job_a: str, job_b: str) -> tuple[dict, Path]:
    from services.common.events import InProcessEventBus
    from services.common.storage import LocalObjectStore
    from services.evaluator.domain import COMPARISONS_PREFIX, EvaluatorDomain

    if not (root / "reports").is_dir():
        raise SystemExit(f"classforge compare: {root} holds no reports/ folder: give the object store folder "
                         f"(OUT/store of `classforge run --out OUT`)")
    store = LocalObjectStore(root)
    with tempfile.TemporaryDirectory(prefix="classforge-compare-") as work:
        domain = EvaluatorDomain(InProcessEventBus(), store, work)
        try:
            comparison = domain.compare(job_a, job_b)
        except ClassforgeError as exc:
            raise SystemExit(f"classforge compare: {exc.message}") from None
    return comparison, root / f"{COMPARISONS_PREFIX}{job_a}__{job_b}" / "index.html"


def _compare_remote(args) -> tuple[dict, Path]:
    from classforge.v1 import evaluator_service_pb2 as pb
    from classforge.v1 import evaluator_service_pb2_grpc as pb_grpc
    from services.common.auth import cli_token, with_token
    from services.common.channels import channel_from_args
    from services.common.report_fetch import fetch_report
    from services.evaluator import compare as compare_mod

    stub = pb_grpc.EvaluatorServiceStub(with_token(channel_from_args(args.evaluator, args), cli_token(args)))
    reply = stub.CompareEvaluations(pb.CompareEvaluationsRequest(job_a=args.job_a, job_b=args.job_b),
                                    timeout=max(args.timeout, 300.0))
    index = fetch_report(reply.comparison_uri, Path(args.out or f"comparisons/{args.job_a}__{args.job_b}"))
    comparison = json.loads((index.parent / compare_mod.COMPARISON_JSON).read_text())
    return comparison, index
