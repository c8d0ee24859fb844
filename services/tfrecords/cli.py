"""`classforge records build DATASET --out DIR`: builds a dataset's TFRecords locally, with the library
the service uses (no gRPC, no Kafka).

    classforge records build ./store/datasets/fmnist --out ./store          # a dataset directory
    classforge records build fmnist --out ./store                           # a dataset id in --store (default: --out)
    classforge records build fmnist --store s3://127.0.0.1:19000/classforge --out ./out --max-side 64

DATASET is a prepared dataset's directory (…/datasets/<id>, the layout ingest writes) or a dataset id
in --store. The records go to `<out>/records/<build_id>/` (shards, then manifest.json last); --out
and --store take a directory or s3://HOST:PORT/BUCKET (credentials from CLASSFORGE_S3_ACCESS_KEY and
CLASSFORGE_S3_SECRET_KEY). A build whose manifest exists is not built again unless --force.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

from services.common.errors import ClassforgeError
from services.common.storage import LocalObjectStore, ObjectStore, open_object_store
from services.tfrecords.builder import BuildOptions, RecordsBuilder


def register(subparsers) -> None:
    """Adds `records build` to the classforge command line."""
    records = subparsers.add_parser("records", help="build TFRecords from a prepared dataset")
    sub = records.add_subparsers(dest="records_command", required=True)
    build = sub.add_parser("build", help="build a dataset's sharded TFRecords into --out",
                           description=__doc__.split("\n\n", 1)[1],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    build.add_argument("dataset", help="a dataset directory (…/datasets/<id>) or a dataset id in --store")
    build.add_argument("--out", required=True, help="directory or s3:// URL; records go to OUT/records/<build id>/")
    build.add_argument("--store", default="", help="where a dataset id is looked up (default: --out)")
    build.add_argument("--shard-bytes", type=int, default=0, help="target shard size (default: about 100 MB)")
    build.add_argument("--min-shards", type=int, default=0,
                       help="at least this many shards per split: the trainer's read parallelism (default 8)")
    build.add_argument("--max-side", type=int, default=0,
                       help="re-encode as JPEG with the longer side at most this (default: keep the original bytes)")
    build.add_argument("--jpeg-quality", type=int, default=0, help="quality of re-encoded JPEGs (default 90)")
    build.add_argument("--workers", type=int, default=0, help="encoding processes (default: one per CPU)")
    build.add_argument("--force", action="store_true", help="build again even if the manifest exists")
    build.set_defaults(func=cmd_build)


def _open(url: str) -> ObjectStore:
    return open_object_store(url, access_key=os.environ.get("CLASSFORGE_S3_ACCESS_KEY", ""),
                             secret_key=os.environ.get("CLASSFORGE_S3_SECRET_KEY", ""),
                             secure=os.environ.get("CLASSFORGE_S3_SECURE", "").lower() in ("1", "true", "yes"),
                             ca_bundle=os.environ.get("CLASSFORGE_S3_CA_BUNDLE", ""))


def cmd_build(args) -> int:
    try:
        out = _open(args.out)
        path = Path(args.dataset)
        if path.is_dir():  # a dataset directory: its parent's parent is the store (…/datasets/<id>)
            path = path.resolve()
            store: ObjectStore = LocalObjectStore(path.parent.parent)
            dataset_id, prefix = path.name, f"{path.parent.name}/{path.name}"
            factory = None
        else:
            source = args.store or args.out
            store, dataset_id, prefix = _open(source), args.dataset, None
            factory = functools.partial(_open, source)
        options = BuildOptions(shard_bytes=args.shard_bytes, max_side=args.max_side,
                               jpeg_quality=args.jpeg_quality, min_shards=args.min_shards)
        started = time.monotonic()
        result = RecordsBuilder(workers=args.workers, store_factory=factory).build(
            store, dataset_id, options, out_store=out, dataset_prefix=prefix, force=args.force)
    except ClassforgeError as exc:
        print(f"classforge: {type(exc).__name__}: {exc.message}", file=sys.stderr)
        return 1
    splits = result.manifest["splits"]
    location = str(out.local_path(result.prefix) or out.uri(result.prefix))
    summary = {"build_id": result.build_id, "records": location, "built": result.built,
               "seconds": round(time.monotonic() - started, 3),
               "splits": {name: {"examples": s["examples"], "shards": len(s["shards"]), "bytes": s["bytes"]}
                          for name, s in splits.items()}}
    if getattr(args, "json", False):
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{'built' if result.built else 'already built'}: {result.build_id} -> {location}")
    for name, s in summary["splits"].items():
        print(f"  {name:<5} {s['examples']:>9} examples  {s['shards']:>4} shards  {s['bytes'] / 1e6:>10.1f} MB")
    if result.built:
        rate = sum(s["examples"] for s in summary["splits"].values()) / max(summary["seconds"], 1e-9)
        print(f"  {summary['seconds']:.1f} s, {rate:,.0f} examples/s")
    return 0
