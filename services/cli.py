"""The `classforge` command line.

    classforge serve jobs                      run one service (distributed mode)
    classforge submit spec.yaml                submit a job (YAML or JSON JobSpec)
    classforge status JOB_ID | watch JOB_ID | cancel JOB_ID | list
    classforge run SOURCE --out DIR            every service in this process (SOURCE as for `dataset prepare`)
    classforge run SOURCE --out DIR --from JOB | submit spec.yaml --from JOB   retrain from an earlier job's model
    classforge lineage JOB                     dataset versions, records, model, report, served version
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from pathlib import Path

import grpc
import yaml
from google.protobuf import json_format

from classforge.v1 import common_pb2
from classforge.v1 import jobs_service_pb2 as jobs_pb
from classforge.v1 import jobs_service_pb2_grpc as jobs_grpc
from services.common.auth import add_token_flag, cli_token, with_token
from services.common.channels import add_tls_flags, channel_from_args
from services.common.report_fetch import deployment_store, fetch_report

# `classforge serve NAME` runs services/<module>/main.py.
SERVICES = {"jobs": "jobs", "ingest": "ingest", "tfrecords": "tfrecords", "trainer": "trainer",
            "evaluator": "evaluator", "inference": "inference", "model-server": "model_server"}
# Each service package may add its own subcommands with `register(subparsers)`; they import their
# heavy dependencies (TensorFlow) only when their command runs, so `classforge --help` stays fast.
COMMAND_MODULES = ("services.ingest.cli", "services.tfrecords.cli", "services.trainer.cli",
                   "services.evaluator.cli", "services.inference.cli")


def load_spec(path: Path) -> common_pb2.JobSpec:
    """Reads a JobSpec from YAML or JSON (field names as in the proto, snake_case or camelCase)."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"classforge: cannot read {path}: {exc}") from None
    try:
        return json_format.ParseDict(data, common_pb2.JobSpec())
    except json_format.ParseError as exc:
        raise SystemExit(f"classforge: {path}: {exc}") from None


def apply_training_flags(spec: common_pb2.JobSpec, args) -> common_pb2.JobSpec:
    """`--time-budget` and `--recipe` over the spec's training config (the flags win)."""
    from services.common.durations import parse_duration
    from services.common.errors import InvalidArgument

    if args.time_budget:
        try:
            parse_duration(args.time_budget, "--time-budget")
        except InvalidArgument as exc:
            raise SystemExit(f"classforge: {exc.message}") from None
        spec.training.time_budget = args.time_budget
    if args.recipe:
        spec.training.recipe = args.recipe
    return spec


def _jobs_stub(args) -> jobs_grpc.JobsServiceStub:
    return jobs_grpc.JobsServiceStub(with_token(channel_from_args(args.jobs, args), cli_token(args)))


def _print(message, as_json: bool) -> None:
    if as_json:
        print(json_format.MessageToJson(message, preserving_proto_field_name=True))
    else:
        print(json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True), indent=2))


def cmd_run(args) -> int:
    # Progress goes to stdout; service logs only when something is wrong, as plain lines on stderr.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from services import embedded  # TensorFlow loads here, not when the parser is built
    from services.common.errors import ClassforgeError

    spec = apply_training_flags(load_spec(Path(args.config)) if args.config else common_pb2.JobSpec(), args)
    spec = retrain_embedded(args, spec)
    try:
        return embedded.run(args.source, Path(args.out), spec, list_file=args.list_file,
                            plain=args.no_progress or args.json)
    except ClassforgeError as exc:  # an unusable SOURCE: say what and where, no traceback
        print(f"classforge: {exc.message}", file=sys.stderr)
        return 1


def cmd_serve(args) -> int:
    return importlib.import_module(f"services.{SERVICES[args.service]}.main").main()


def cmd_submit(args) -> int:
    spec = retrain_submitted(args, apply_training_flags(load_spec(Path(args.spec)), args))
    reply = _jobs_stub(args).SubmitJob(jobs_pb.SubmitJobRequest(spec=spec, request_id=args.request_id),
                                       timeout=args.timeout)
    print(reply.job_id)
    return 0


def shown_status(job) -> str:
    """The job's status for a person: a job waiting in its stage's queue (a busy trainer replica) is
    QUEUED with its place there, though its JobStatus stays RUNNING."""
    if job.queue_position > 0 and job.status == common_pb2.JOB_STATUS_RUNNING:
        return f"QUEUED #{job.queue_position}"
    return common_pb2.JobStatus.Name(job.status)[11:]


def cmd_status(args) -> int:
    reply = _jobs_stub(args).GetJob(jobs_pb.GetJobRequest(job_id=args.job_id), timeout=args.timeout)
    if not args.json:
        job = reply.job
        why = job.queue_reason or job.error
        print(f"job {job.job_id} {shown_status(job)}" + (f": {why}" if why else ""))
    _print(reply.job, args.json)
    return 0


def cmd_watch(args) -> int:
    """Follows the job until it ends: a bar per stage on a terminal, plain lines at a bounded rate
    otherwise (--no-progress), or every event as JSON (--json)."""
    from services import progress

    stub = _jobs_stub(args)
    # JSON is the job's history, as stored; a person also gets the heartbeats' live progress.
    replies = stub.WatchJob(jobs_pb.WatchJobRequest(job_id=args.job_id, include_heartbeats=not args.json))
    if args.json:
        for reply in replies:
            _print(reply, True)
        return 0
    with progress.display(plain=args.no_progress) as shown:
        for reply in replies:
            shown.update(reply.event, reply.job)
            if reply.event.WhichOneof("payload") == "training_progress" and reply.event.training_progress.plan:
                shown.note(reply.event.training_progress.plan)  # the trainer's plan, once per run
    job = stub.GetJob(jobs_pb.GetJobRequest(job_id=args.job_id), timeout=args.timeout).job
    print(f"job {job.job_id} {common_pb2.JobStatus.Name(job.status)[11:]}" + (f": {job.error}" if job.error else ""))
    return 0


def cmd_cancel(args) -> int:
    reply = _jobs_stub(args).CancelJob(jobs_pb.CancelJobRequest(job_id=args.job_id, reason=args.reason),
                                       timeout=args.timeout)
    print(f"cancel requested for {reply.job.job_id}")
    return 0


def cmd_report(args) -> int:
    job = _jobs_stub(args).GetJob(jobs_pb.GetJobRequest(job_id=args.job_id), timeout=args.timeout).job
    if not job.report_uri:
        print(f"classforge: job {args.job_id} has no report yet (stage "
              f"{common_pb2.JobStage.Name(job.stage)}, status {common_pb2.JobStatus.Name(job.status)})",
              file=sys.stderr)
        return 1
    index = fetch_report(job.report_uri, Path(args.out or f"reports/{args.job_id}"))
    print(f"report: {index.resolve()}")
    return 0


def cmd_list(args) -> int:
    reply = _jobs_stub(args).ListJobs(jobs_pb.ListJobsRequest(page_size=args.limit), timeout=args.timeout)
    if args.json:
        _print(reply, True)
        return 0
    for job in reply.jobs:
        print(f"{job.job_id}  {shown_status(job):<10} "
              f"{common_pb2.JobStage.Name(job.stage)[10:]:<11} {job.owner or '-':<16} {job.spec.display_name}")
    return 0


# --------------------------------------------------------------------------- retraining from an earlier job


def add_from_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="from_job", default="", metavar="JOB",
                        help="start from JOB's model (its weights; its architecture where the spec sets none): "
                             "straight to fine-tuning when the classes match, else a rebuilt head")


def retrain_embedded(args, spec: common_pb2.JobSpec) -> common_pb2.JobSpec:
    """`run --from JOB`: the earlier job's model is in this --out folder's store (models/JOB/)."""
    if not getattr(args, "from_job", ""):
        return spec
    from services.common.errors import InvalidArgument
    from services.common.job_uri import job_from_uri, job_uri, retrain_from

    try:
        job_from_uri(job_uri(args.from_job), "--from")
    except InvalidArgument as exc:
        raise SystemExit(f"classforge: {exc.message}") from None
    config = Path(args.out) / "store" / "models" / args.from_job / "config.json"
    if not config.is_file():
        raise SystemExit(f"classforge: --from {args.from_job}: no finished model of that job in {Path(args.out)} "
                         f"({config} is missing); give the --out folder of the earlier run")
    earlier = json_format.Parse(config.read_text(), common_pb2.TrainingConfig(), ignore_unknown_fields=True)
    spec.training.CopyFrom(retrain_from(spec.training, earlier, args.from_job))
    return spec


def retrain_submitted(args, spec: common_pb2.JobSpec) -> common_pb2.JobSpec:
    """`submit --from JOB`: the earlier job's training config comes from the jobs service."""
    if not getattr(args, "from_job", ""):
        return spec
    from services.common.job_uri import retrain_from

    earlier = _jobs_stub(args).GetJob(jobs_pb.GetJobRequest(job_id=args.from_job), timeout=args.timeout).job
    if earlier.status != common_pb2.JOB_STATUS_SUCCEEDED and not earlier.model.job_id:
        raise SystemExit(f"classforge: --from {args.from_job}: that job has no model "
                         f"(status {common_pb2.JobStatus.Name(earlier.status)[11:]})")
    spec.training.CopyFrom(retrain_from(spec.training, earlier.spec.training, args.from_job))
    return spec


# --------------------------------------------------------------------------- lineage


def register_lineage(sub) -> None:
    lineage = sub.add_parser("lineage", help="dataset version -> parents -> records -> model -> report -> served "
                                             "version of a job, from the manifests in the object store")
    lineage.add_argument("job_id")
    lineage.add_argument("--store", default="", metavar="DIR_OR_URL",
                         help="the object store: a directory (classforge run's OUT/store) or s3://HOST:PORT/BUCKET; "
                              "default: the services' store from CLASSFORGE_S3_*")
    lineage.set_defaults(func=cmd_lineage)


def cmd_lineage(args) -> int:
    from services import lineage
    from services.common.storage import open_object_store

    if args.store:
        if "://" not in args.store and not Path(args.store).is_dir():
            raise SystemExit(f"classforge: --store {args.store} is not a directory")
        store = open_object_store(args.store, access_key=os.environ.get("CLASSFORGE_S3_ACCESS_KEY", ""),
                                  secret_key=os.environ.get("CLASSFORGE_S3_SECRET_KEY", ""),
                                  secure=os.environ.get("CLASSFORGE_S3_SECURE", "").lower() in ("1", "true", "yes"),
                                  ca_bundle=os.environ.get("CLASSFORGE_S3_CA_BUNDLE", ""))
    else:
        store = deployment_store()
    links = lineage.trace(store, args.job_id)
    if args.json:
        print(json.dumps([link.as_dict() for link in links], indent=2))
    else:
        print(lineage.render(args.job_id, links))
    return 0 if any(link.ident for link in links) else 1


def _training_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--time-budget", default="", metavar="DURATION",
                        help="end training plus evaluation within this time, e.g. 10m, 1h30m or 600 (seconds)")
    parser.add_argument("--recipe", choices=("auto", "imagenet-gpu"), default="",
                        help="how unset training fields are chosen: auto (from the data and this hardware; the "
                             "default without a training config) or imagenet-gpu (224 px ResNet18 defaults)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="classforge", description="Image classifiers from folders of images.")
    parser.add_argument("--jobs", default=os.environ.get("CLASSFORGE_JOBS_ADDR", "127.0.0.1:50051"),
                        help="jobs service address (env CLASSFORGE_JOBS_ADDR)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for an answer")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_token_flag(parser)
    add_tls_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole pipeline on a dataset source, every service in this process")
    run.add_argument("source", metavar="SOURCE",
                     help="what `dataset prepare` takes: a folder per label, a list file (`path task1 [task2 …]`), "
                          "a .zip/.tar/.tar.gz archive of either; or s3://HOST:PORT/BUCKET/PREFIX")
    run.add_argument("--out", required=True, help="where the store, models, reports and serving path go")
    run.add_argument("--config", help="YAML/JSON JobSpec (dataset options, training config, gates)")
    add_from_flag(run)
    run.add_argument("--list-file", default="", metavar="NAME",
                     help="list file inside a folder or archive SOURCE (multi-task data)")
    run.add_argument("--no-progress", action="store_true",
                     help="plain progress lines (at most one per stage every 10 s) even on a terminal")
    _training_flags(run)
    run.set_defaults(func=cmd_run)
    serve = sub.add_parser("serve", help="run one service until SIGTERM")
    serve.add_argument("service", choices=sorted(SERVICES))
    serve.set_defaults(func=cmd_serve)
    submit = sub.add_parser("submit", help="submit a job from a YAML/JSON JobSpec")
    submit.add_argument("spec")
    submit.add_argument("--request-id", default="", help="makes a retried submit return the same job")
    add_from_flag(submit)
    _training_flags(submit)
    submit.set_defaults(func=cmd_submit)
    status = sub.add_parser("status", help="show one job")
    status.add_argument("job_id")
    status.set_defaults(func=cmd_status)
    watch = sub.add_parser("watch", help="follow a job's events until it ends")
    watch.add_argument("job_id")
    watch.add_argument("--no-progress", action="store_true",
                       help="plain progress lines (at most one per stage every 10 s) even on a terminal")
    watch.set_defaults(func=cmd_watch)
    cancel = sub.add_parser("cancel", help="ask a running job to stop")
    cancel.add_argument("job_id")
    cancel.add_argument("--reason", default="")
    cancel.set_defaults(func=cmd_cancel)
    report = sub.add_parser("report", help="fetch a job's evaluation report and say where index.html is")
    report.add_argument("job_id")
    report.add_argument("--out", default="", help="download folder (default reports/JOB_ID)")
    report.set_defaults(func=cmd_report)
    listing = sub.add_parser("list", help="list jobs, newest first")
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(func=cmd_list)
    register_lineage(sub)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def serve_only_parser() -> argparse.ArgumentParser:
    """`classforge serve NAME` alone: what a container runs. The full parser imports every service's
    command module, and a service image carries only its own dependencies (no TensorFlow in jobs)."""
    parser = argparse.ArgumentParser(prog="classforge serve")
    parser.add_argument("service", choices=sorted(SERVICES))
    parser.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return cmd_serve(serve_only_parser().parse_args(argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except grpc.RpcError as exc:
        print(f"classforge: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
