"""A report folder (reports/<job>/, comparisons/<a>__<b>/) where a person can open it, for the client
commands that show one (`classforge report`, `classforge compare --evaluator`): in place for a local
store (file://), else downloaded from the deployment's object store."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit


def fetch_report(report_uri: str, out: Path) -> Path:
    """Where index.html of a job's report can be opened: in place for a local store (file://),
    else downloaded from the object store (credentials from CLASSFORGE_S3_*) into `out`."""
    parts = urlsplit(report_uri)
    if parts.scheme == "file":
        return Path(unquote(parts.path)) / "index.html"
    if parts.scheme != "s3":
        raise SystemExit(f"classforge: cannot fetch a report from {report_uri!r}")
    store = deployment_store(parts.netloc)
    prefix = parts.path.lstrip("/").rstrip("/") + "/"
    for info in store.list(prefix):
        store.get_file(info.key, out / info.key[len(prefix):])
    return out / "index.html"


def deployment_store(bucket: str = ""):
    """The deployment's object store, from CLASSFORGE_S3_* (the bucket named, or CLASSFORGE_S3_BUCKET)."""
    from services.common.settings import ServiceSettings
    from services.common.storage.minio import MinioObjectStore

    settings = ServiceSettings.load(os.environ, kafka_bootstrap="-")
    return MinioObjectStore.from_settings(settings, bucket)
