"""`classforge classify | models | rollback`: the inference service from the command line.

    classforge classify IMAGE [IMAGE …] [--model NAME] [--version N] [--top-k K]
    classforge models [NAME]
    classforge rollback NAME VERSION

services/cli.py adds these with `register(subparsers)`. The global --timeout and --json options are
used when the main parser defines them.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from google.protobuf import json_format

from classforge.v1 import inference_service_pb2 as pb
from classforge.v1 import inference_service_pb2_grpc as pb_grpc
from services.common.auth import cli_token, with_token
from services.common.channels import add_tls_flags, channel_from_args

DEFAULT_ADDRESS = "127.0.0.1:50056"


def _stub(args) -> pb_grpc.InferenceServiceStub:
    return pb_grpc.InferenceServiceStub(with_token(channel_from_args(args.inference, args), cli_token(args)))


def _timeout(args) -> float:
    return getattr(args, "timeout", None) or 30.0


def _print_json(message) -> None:
    print(json_format.MessageToJson(message, preserving_proto_field_name=True))


def find_saved_model(folder: Path) -> Path:
    """The SavedModel inside a folder a user has: an export, a models/<job> folder, a serving base
    path (<model>/<version>/) or a `classforge run` output; the newest version wins."""
    candidates = sorted(folder.rglob("saved_model.pb"),
                        key=lambda p: (int(p.parent.name) if p.parent.name.isdigit() else -1, str(p)))
    if not candidates:
        raise SystemExit(f"classforge: no saved_model.pb under {folder}")
    return candidates[-1].parent


def classify_offline(args) -> int:
    """Runs the SavedModel's serving signature in this process: same contract as the server."""
    import json

    import numpy as np
    import tensorflow as tf

    from services.common import serving_signature as contract

    model_dir = find_saved_model(Path(args.model))
    signature = tf.saved_model.load(str(model_dir)).signatures[contract.SIGNATURE_NAME]
    labels = json.loads((model_dir / "assets" / contract.LABELS_ASSET).read_text())
    classes = {task["name"]: task["classes"] for task in labels["tasks"]}
    top_k = args.top_k or 5
    for path in args.images:
        try:
            outputs = signature(**{contract.INPUT_KEY: tf.constant([Path(path).read_bytes()])})
        except OSError as exc:
            raise SystemExit(f"classforge: cannot read {path}: {exc.strerror}") from None
        except tf.errors.InvalidArgumentError:
            raise SystemExit(f"classforge: {path} is not an image the model can decode") from None
        print(f"{path}  (model {model_dir})")
        for task in contract.tasks_in(outputs):
            probabilities = outputs[contract.probabilities_key(task)].numpy()[0]
            best = np.argsort(-probabilities)[:top_k]
            print(f"  {task}: " + ", ".join(f"{classes[task][i]} {probabilities[i]:.3f}" for i in best))
    return 0


def cmd_classify(args) -> int:
    if args.model and Path(args.model).is_dir():
        return classify_offline(args)
    stub = _stub(args)
    for path in args.images:
        try:
            image = Path(path).read_bytes()
        except OSError as exc:
            raise SystemExit(f"classforge: cannot read {path}: {exc.strerror}") from None
        reply = stub.Classify(pb.ClassifyRequest(image=image, top_k=args.top_k, model_name=args.model,
                                                 version=args.version), timeout=_timeout(args))
        if getattr(args, "json", False):
            _print_json(reply)
            continue
        print(f"{path}  (model {reply.model_name} version {reply.version})")
        for prediction in reply.predictions:
            scores = ", ".join(f"{s.label} {s.probability:.3f}" for s in prediction.top)
            print(f"  {prediction.task}: {scores}")
    return 0


def _state(state: int) -> str:
    return pb.ModelVersionState.Name(state).removeprefix("MODEL_VERSION_STATE_")


def _print_model(model: pb.ServedModel) -> None:
    print(model.model_name)
    for v in model.versions:
        print(f"  {'*' if v.serving else ' '} version {v.version:<6} {_state(v.state):<11} job {v.job_id or '-'}")


def cmd_models(args) -> int:
    reply = _stub(args).ListModels(pb.ListModelsRequest(model_name=args.name), timeout=_timeout(args))
    if getattr(args, "json", False):
        _print_json(reply)
    elif not reply.models:
        print("no models published")
    for model in [] if getattr(args, "json", False) else reply.models:
        _print_model(model)
    return 0


def cmd_rollback(args) -> int:
    reply = _stub(args).Rollback(pb.RollbackRequest(model_name=args.name, version=args.version),
                                 timeout=max(_timeout(args), 60.0))
    if getattr(args, "json", False):
        _print_json(reply)
    else:
        print(f"{args.name}: version {args.version} now answers")
        _print_model(reply.model)
    return 0


def register(subparsers) -> None:
    address = argparse.ArgumentParser(add_help=False)
    address.add_argument("--inference", default=os.environ.get("CLASSFORGE_INFERENCE_ADDR", DEFAULT_ADDRESS),
                         help=f"inference service address (env CLASSFORGE_INFERENCE_ADDR, default {DEFAULT_ADDRESS})")
    add_tls_flags(address)
    classify = subparsers.add_parser("classify", parents=[address], help="classify image files")
    classify.add_argument("images", nargs="+", metavar="IMAGE")
    classify.add_argument("--model", default="",
                          help="served model name (default: the service's default model), or a folder holding "
                               "a SavedModel (e.g. a `classforge run` output) to classify offline")
    classify.add_argument("--version", type=int, default=0, help="a specific version (default: the serving one)")
    classify.add_argument("--top-k", type=int, default=0, help="classes per task (default: the service's default)")
    classify.set_defaults(func=cmd_classify)
    models = subparsers.add_parser("models", parents=[address], help="list served models and their versions")
    models.add_argument("name", nargs="?", default="")
    models.set_defaults(func=cmd_models)
    rollback = subparsers.add_parser("rollback", parents=[address], help="make an earlier version the one answering")
    rollback.add_argument("name")
    rollback.add_argument("version", type=int)
    rollback.set_defaults(func=cmd_rollback)

