"""`classforge dataset …`: prepare a dataset locally, or upload and inspect datasets on the ingest service.

    classforge dataset prepare SOURCE --out DIR [--max-ratio 5] [--val-fraction 0.1] [--test-fraction 0] [--seed N]
    classforge dataset upload SOURCE [--request-id ID] [options]     CreateDataset over gRPC
    classforge dataset list | show ID | report ID                    ListDatasets / GetDataset / GetDatasetReport
    classforge dataset relabel DATASET corrections.csv [--out DIR]  a new version from a reviewed mislabels.csv
    classforge datasets                                              same as `dataset list`

SOURCE is a folder with one sub-folder per label, a list file (`path task1 [task2 …]` with a header),
or a .zip / .tar / .tar.gz archive of either. `prepare` writes the dataset layout of
docs/architecture.md into DIR: images/, labels.json, train.list, val.list, test.list, report.json,
report.md and manifest.json.

`services.cli` adds these commands with `register(subparsers)`; `python -m services.ingest.cli` runs
them on their own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
from google.protobuf import json_format

from classforge.v1 import common_pb2
from classforge.v1 import ingest_service_pb2 as pb
from classforge.v1 import ingest_service_pb2_grpc as pb_grpc
from services.common.auth import add_token_flag, cli_token, with_token
from services.common.channels import add_tls_flags, channel_from_args
from services.common.dataset_options import (
    DEFAULT_MAX_CLASS_RATIO,
    DEFAULT_MAX_PIXELS,
    DEFAULT_VAL_FRACTION,
    IngestOptions,
)
from services.common.errors import ClassforgeError, InvalidArgument
from services.common.storage import LocalObjectStore
from services.ingest.prepare import LIST_FILES, Prepared, prepare_dataset
from services.ingest.sources import archive_format_of, local_source_kind, open_local_source

DEFAULT_ADDR = "127.0.0.1:50052"
CHUNK_BYTES = 1024 * 1024
_PROTO_FORMATS = {"zip": pb.ARCHIVE_FORMAT_ZIP, "tar": pb.ARCHIVE_FORMAT_TAR, "tar.gz": pb.ARCHIVE_FORMAT_TAR_GZ}
_FLAGS = {"max_class_ratio": "--max-ratio", "val_fraction": "--val-fraction", "test_fraction": "--test-fraction",
          "seed": "--seed", "max_per_class": "--max-per-class", "min_side": "--min-side",
          "max_pixels": "--max-pixels"}
_OUTPUTS = ("labels.json", *LIST_FILES, "report.json", "report.md", "manifest.json")


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-ratio", type=float, default=DEFAULT_MAX_CLASS_RATIO, metavar="DELTA",
                        help="largest/smallest class bound in the training split after oversampling (default 5)")
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                        help="fraction of each class held out for validation (default 0.1)")
    parser.add_argument("--test-fraction", type=float, default=0.0, help="fraction held out as a test split")
    parser.add_argument("--seed", type=int, default=0, help="seed for splitting, oversampling and shuffling")
    parser.add_argument("--max-per-class", type=int, default=0, metavar="N",
                        help="undersample training classes above N images (0: no cap)")
    parser.add_argument("--min-side", type=int, default=0, metavar="PIXELS",
                        help="reject images with a shorter side (0: no minimum)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"reject images with more pixels (default {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--list-file", default="", metavar="NAME",
                        help="list file inside a folder or archive source (multi-task data)")


def _address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ingest", default=os.environ.get("CLASSFORGE_INGEST_ADDR", DEFAULT_ADDR),
                        help=f"ingest service address (env CLASSFORGE_INGEST_ADDR, default {DEFAULT_ADDR})")
    add_tls_flags(parser)


def register(subparsers) -> None:
    """Adds `dataset {prepare,upload,list,show,report}` and `datasets` to a `classforge` parser."""
    dataset = subparsers.add_parser("dataset", help="prepare a dataset locally, or upload and inspect datasets")
    commands = dataset.add_subparsers(dest="dataset_command", required=True)

    prepare = commands.add_parser("prepare", help="validate, de-duplicate, split and balance SOURCE into DIR")
    prepare.add_argument("source", help="folder per label, list file, or .zip/.tar/.tar.gz of either")
    prepare.add_argument("--out", required=True, metavar="DIR", help="where the dataset is written")
    _add_options(prepare)
    prepare.add_argument("--workers", type=int, default=0, help="validating processes (0: one per CPU)")
    prepare.add_argument("--dataset-id", default="", help="id recorded in the manifest (default: DIR's name)")
    prepare.set_defaults(func=cmd_prepare)

    upload = commands.add_parser("upload", help="send SOURCE to the ingest service (CreateDataset)")
    upload.add_argument("source", help="folder per label, or .zip/.tar/.tar.gz archive")
    _add_options(upload)
    upload.add_argument("--request-id", default="", help="makes a retried upload return the same dataset")
    upload.add_argument("--deadline", type=float, default=3600.0, help="seconds to wait for the dataset")
    _address(upload)
    upload.set_defaults(func=cmd_upload)

    listing = commands.add_parser("list", help="list datasets on the ingest service, newest first")
    listing.add_argument("--limit", type=int, default=50)
    _address(listing)
    listing.set_defaults(func=cmd_list)
    show = commands.add_parser("show", help="show one dataset")
    show.add_argument("dataset_id")
    _address(show)
    show.set_defaults(func=cmd_show)
    report = commands.add_parser("report", help="print a dataset's report (Markdown, or JSON with --json)")
    report.add_argument("dataset_id")
    _address(report)
    report.set_defaults(func=cmd_report)

    register_relabel(commands)

    datasets = subparsers.add_parser("datasets", help="list datasets on the ingest service (= dataset list)")
    datasets.add_argument("--limit", type=int, default=50)
    _address(datasets)
    datasets.set_defaults(func=cmd_list)


# --------------------------------------------------------------------------- prepare (local)


def _options(args) -> IngestOptions:
    options = IngestOptions(max_class_ratio=args.max_ratio, val_fraction=args.val_fraction,
                            test_fraction=args.test_fraction, seed=args.seed, max_per_class=args.max_per_class,
                            min_side=args.min_side, max_pixels=args.max_pixels)
    try:
        return options.validated("options")
    except InvalidArgument as exc:
        flag = _FLAGS.get(exc.field.rsplit(".", 1)[-1], exc.field)
        raise SystemExit(f"classforge: {flag}: {exc.message.split(': ', 1)[-1]}") from None


def cmd_prepare(args) -> int:
    try:
        return _prepare(args)
    except ClassforgeError as exc:  # the data or the source do not allow a dataset: say why, no traceback
        print(f"classforge: {exc.message}", file=sys.stderr)
        return 1


def _prepare(args) -> int:
    options = _options(args)
    source = Path(args.source).expanduser()
    out = Path(args.out).expanduser()
    local_source_kind(source, "SOURCE")  # a missing or unusable source is said before anything is written
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").exists():
        raise SystemExit(f"classforge: --out {out} is not empty and holds no dataset; choose a new or empty folder")
    dataset_id = args.dataset_id or re.sub(r"[^A-Za-z0-9._-]", "-", out.resolve().name).strip(".-") or "dataset"
    with tempfile.TemporaryDirectory(prefix="classforge-prepare-") as work:
        local = open_local_source(source, args.list_file, Path(work), field_name="SOURCE",
                                  list_file_field="--list-file")
        description: dict = {"kind": "local_path", "path": str(source.resolve())}
        if local.kind == "archive":
            description = {"kind": "archive", "path": str(source.resolve()), "archive_format": local.archive_format}
        if local.list_file:
            description["list_file"] = local.list_file
        store = LocalObjectStore(out)
        if (out / "manifest.json").exists():  # replace the dataset written there before, nothing else
            store.delete_prefix("images/")
            for name in _OUTPUTS:
                store.delete(name)
        prepared = prepare_dataset(local.root, store, "", options, dataset_id=dataset_id, source=description,
                                   list_file=local.list_file, list_file_field="--list-file",
                                   extra_rejects=local.rejected, roots=local.roots,
                                   workers=args.workers or None)
    if getattr(args, "json", False):
        print(json.dumps(prepared.manifest, indent=2))
    else:
        print(summary(prepared, out))
    return 0


def summary(prepared: Prepared, out: Path) -> str:
    report = prepared.report
    counts = report["counts"]
    lines = [f"dataset {prepared.dataset_id}: {counts['images']} images written to {out}"]
    for task in report["tasks"]:
        rows = [r for r in report["labels"] if r["task"] == task["name"]]
        width = max([len("label"), *(len(r["label"]) for r in rows)])
        if len(report["tasks"]) > 1:
            lines.append(f"task {task['name']}:")
        lines.append(f"  {'label':<{width}} {'count':>7} {'train':>7} {'balanced':>9} {'val':>6} {'test':>6} "
                     f"{'rejected':>9}")
        for r in rows:
            lines.append(f"  {r['label']:<{width}} {r['count']:>7} {r['train_count']:>7} "
                         f"{r['balanced_train_count']:>9} {r['val_count']:>6} {r['test_count']:>6} {r['rejected']:>9}")
    balance = report["balance"]
    lines.append(f"largest/smallest training class: {balance['ratio_before']:.2f} -> {balance['ratio_after']:.2f} "
                 f"(bound {report['options']['max_class_ratio']:g})")
    lines.append(f"lists: train.list {counts['train']} lines, val.list {counts['val']}, test.list {counts['test']}")
    if counts["rejected"]:
        reasons = ", ".join(f"{code} {n}" for code, n in report["rejected_by_reason"].items())
        lines.append(f"rejected {counts['rejected']} files: {reasons} (details in {out / 'report.md'})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the service


def _stub(args) -> pb_grpc.IngestServiceStub:
    return pb_grpc.IngestServiceStub(with_token(channel_from_args(args.ingest, args), cli_token(args)))


def _print(message, as_json: bool) -> None:
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    print(json.dumps(data, indent=None if as_json else 2))


def _requests(header: pb.CreateDatasetHeader, archive: Path) -> Iterator[pb.CreateDatasetRequest]:
    yield pb.CreateDatasetRequest(header=header)
    with open(archive, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            yield pb.CreateDatasetRequest(chunk=chunk)


def cmd_upload(args) -> int:
    options = _options(args)
    source = Path(args.source).expanduser()
    if not source.exists():
        raise SystemExit(f"classforge: {source} does not exist")
    header = pb.CreateDatasetHeader(options=options.to_proto(), request_id=args.request_id,
                                    source=common_pb2.DataSource(list_file=args.list_file))
    with tempfile.TemporaryDirectory(prefix="classforge-upload-") as work:
        if source.is_dir():
            archive = Path(work) / "upload.tar.gz"
            with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
                for path in sorted(source.rglob("*")):
                    if path.is_file() and not path.is_symlink():
                        tar.add(path, arcname=path.relative_to(source).as_posix(), recursive=False)
            fmt = "tar.gz"
        else:
            archive, fmt = source, archive_format_of(source)
            if not fmt:
                raise SystemExit(f"classforge: {source} is neither a folder nor a .zip/.tar/.tar.gz archive")
        header.archive_format = _PROTO_FORMATS[fmt]
        reply = _stub(args).CreateDataset(_requests(header, archive), timeout=args.deadline)
    _print(reply.dataset, getattr(args, "json", False))
    return 0


def cmd_list(args) -> int:
    reply = _stub(args).ListDatasets(pb.ListDatasetsRequest(page_size=args.limit), timeout=_timeout(args))
    if getattr(args, "json", False):
        _print(reply, True)
        return 0
    for d in reply.datasets:
        print(f"{d.ref.dataset_id}  images {d.image_count:<7} train {d.train_count:<7} val {d.val_count:<6} "
              f"test {d.test_count:<6} rejected {d.rejected_count:<5} tasks {','.join(d.ref.tasks)}")
    return 0


def cmd_show(args) -> int:
    reply = _stub(args).GetDataset(pb.GetDatasetRequest(dataset_id=args.dataset_id), timeout=_timeout(args))
    _print(reply.dataset, getattr(args, "json", False))
    return 0


def cmd_report(args) -> int:
    reply = _stub(args).GetDatasetReport(pb.GetDatasetReportRequest(dataset_id=args.dataset_id),
                                         timeout=_timeout(args))
    if getattr(args, "json", False):
        _print(reply.report, True)
    else:
        print(reply.markdown)
    return 0


def _timeout(args) -> float:
    return getattr(args, "timeout", 30.0)


# --------------------------------------------------------------------------- relabel (local or the service)


def register_relabel(commands) -> None:
    relabel = commands.add_parser(
        "relabel", help="write a new dataset version from a reviewed mislabels.csv (decision column: keep, drop, "
                        "relabel:<class>)")
    relabel.add_argument("dataset", help="a dataset folder (with manifest.json) or a dataset id on the ingest service")
    relabel.add_argument("corrections", help="mislabels.csv of an evaluation report with its decision column filled")
    relabel.add_argument("--out", default="", metavar="DIR",
                         help="local only: where the new version goes (default: beside DATASET, named by its id)")
    relabel.add_argument("--dataset-id", default="", help="id of the new version (default <root>-v<n>-<digest>)")
    _address(relabel)
    relabel.set_defaults(func=cmd_relabel)


def cmd_relabel(args) -> int:
    corrections = Path(args.corrections).expanduser()
    try:
        data = corrections.read_bytes()
    except OSError as exc:
        raise SystemExit(f"classforge: cannot read {corrections}: {exc.strerror}") from None
    folder = Path(args.dataset).expanduser()
    if (folder / "manifest.json").is_file():
        try:
            return _relabel_local(args, folder, corrections, data)
        except ClassforgeError as exc:
            print(f"classforge: {exc.message}", file=sys.stderr)
            return 1
    if folder.exists():
        raise SystemExit(f"classforge: {folder} holds no manifest.json, so it is no dataset")
    reply = _stub(args).RelabelDataset(pb.RelabelDatasetRequest(
        dataset_id=args.dataset, corrections=data, new_dataset_id=args.dataset_id), timeout=_timeout(args))
    if getattr(args, "json", False):
        _print(reply, True)
    else:
        print(f"dataset {reply.dataset.ref.dataset_id} (from {reply.parent_dataset_id}): relabeled "
              f"{reply.relabeled_count}, dropped {reply.dropped_count}, kept {reply.kept_count}; images "
              f"{reply.dataset.image_count}, train {reply.dataset.train_count}, val {reply.dataset.val_count}, "
              f"test {reply.dataset.test_count}")
    return 0


def _relabel_local(args, folder: Path, corrections: Path, data: bytes) -> int:
    from services.ingest.relabel import plan_relabel, write_version

    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SystemExit(f"classforge: {corrections} is not UTF-8 text (byte {exc.start})") from None
    plan = plan_relabel(LocalObjectStore(folder), "", text, field=str(corrections),
                        origin=str(corrections.resolve()))
    new_id = args.dataset_id or plan.default_id
    out = Path(args.out).expanduser() if args.out else folder.resolve().parent / new_id
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"classforge: {out} is not empty; choose a new folder with --out")
    prepared = write_version(plan, LocalObjectStore(out), "", new_id)
    if getattr(args, "json", False):
        print(json.dumps(prepared.manifest, indent=2))
        return 0
    c = prepared.manifest["corrections"]
    print(f"dataset {new_id} (from {plan.parent['dataset_id']}): relabeled {c['relabeled']}, dropped "
          f"{c['dropped']}, kept {c['kept']}; written to {out}")
    for task, labels in prepared.manifest["label_counts_diff"].items():
        changed = [f"{label} {d['before']}->{d['after']}" for label, d in labels.items() if d["change"]]
        if changed:
            print(f"  {task}: " + ", ".join(changed))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="classforge", description="Dataset commands of classforge.")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for an answer")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_token_flag(parser)
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ClassforgeError as exc:
        print(f"classforge: {exc.message}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"classforge: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

